"""systemd's notify protocol, written by hand: one datagram to $NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from types import TracebackType
from typing import Self

from controller.log import get_logger

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


class Watchdog:
    """Pings systemd's watchdog from the loop: a stuck loop stops the pings and gets restarted."""

    name = "watchdog"

    def __init__(self) -> None:
        self.interval = watchdog_interval()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def run(self) -> None:
        """WATCHDOG=1 every interval, forever (or nothing, without WatchdogSec)."""
        if self.interval is None:
            await asyncio.Event().wait()
            return
        while True:
            sd_notify("WATCHDOG=1")
            await asyncio.sleep(self.interval)
