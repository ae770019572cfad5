"""systemd's notify protocol, written by hand: one datagram to $NOTIFY_SOCKET (and its receiver)."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import struct
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

from controller.core.log import get_logger
from controller.daemon.components import Component

log = get_logger("notify")


def sd_notify(message: str) -> bool:
    """Send a state line such as READY=1; False when not started by systemd (no socket)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never block the event loop: a reader that fell behind (a full
            # datagram queue) costs one notification, not a stalled daemon.
            sock.setblocking(False)
            sock.connect(address)
            sock.send(message.encode())
    except OSError as exc:
        log.warning("sd_notify failed", message=message.split("\n", maxsplit=1)[0], error=str(exc))
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when not asked."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.1, int(usec) / 2e6)
    except ValueError:
        return None


def reloading() -> None:
    """Tell systemd a reload began (READY=1 ends it)."""
    sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


class Watchdog(Component):
    """Pings systemd's watchdog from the loop: a stuck loop stops the pings and gets restarted."""

    name = "watchdog"

    def __init__(self) -> None:
        self.interval = watchdog_interval()

    async def run(self) -> None:
        """WATCHDOG=1 every interval, forever (or nothing, without WatchdogSec)."""
        if self.interval is None:
            await asyncio.Event().wait()
            return
        while True:
            sd_notify("WATCHDOG=1")
            await asyncio.sleep(self.interval)


def notify_fields(datagram: bytes) -> dict[str, str]:
    """The KEY=VALUE lines of one notify message."""
    fields = {}
    for line in datagram.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return fields


class NotifySocket:
    """The receiving end of the protocol, as systemd holds it: for `netroot up` and tests.

    An abstract-namespace datagram socket with a random name (no file to
    clean up, no path length limit); each message carries its sender's pid
    (SO_PASSCRED), so only the expected process can declare itself ready.
    """

    def __init__(self) -> None:
        self.name = f"netroot-notify-{os.getpid()}-{secrets.token_hex(8)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + self.name)

    @property
    def address(self) -> str:
        """The value of NOTIFY_SOCKET for the child."""
        return "@" + self.name

    def close(self) -> None:
        """Stop listening."""
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def receive(self, timeout: float) -> tuple[int, dict[str, str]] | None:
        """One message within timeout seconds: (sender pid, fields), or None."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
        except TimeoutError:
            return None
        pid = 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack(payload[: _UCRED.size])[0]
        return pid, notify_fields(data)

    def wait_ready(self, pid: int, alive: Callable[[], bool], within_s: float) -> bool:
        """True once process pid sent READY=1; False if it died or within_s ran out."""
        deadline = time.monotonic() + within_s
        while (left := deadline - time.monotonic()) > 0:
            got = self.receive(min(left, 0.5))
            if got is not None and got[0] == pid and got[1].get("READY") == "1":
                return True
            if got is None and not alive():
                return False
        return False


_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
