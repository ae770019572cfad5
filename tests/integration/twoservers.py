"""Two boot servers on one machine: two network namespaces joined by a veth pair, a
mosquitto in each (the replica's bridged to the primary's with the shipped example),
and a way to open sockets inside a namespace from the test process.

Used by tests/integration/test_replica.py and the e2e boot from a replica.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from integration.harness import wait_for
from support import REPO, stop_process

from controller.serve import nfs

PRIMARY, REPLICA = "10.77.5.1", "10.77.5.2"
MQTT_PORT, HTTP_PORT, NFS_PORT = 1883, 9650, 2049
CLONE_NEWNET = 0x40000000

T = TypeVar("T")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=30)


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """fn's result, run in a thread that joined network namespace ns: the sockets it
    opens, and the threads it starts (paho's loop), live there."""
    out: dict[str, Any] = {}

    def target() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                out["error"] = OSError(ctypes.get_errno(), "setns")
                return
        finally:
            os.close(fd)
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]  # type: ignore[no-any-return]


def listening(ns: str, port: int) -> bool:
    def probe() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
        except OSError:
            return False
        return True

    return in_netns(ns, probe)


@contextlib.contextmanager
def two_namespaces() -> Iterator[tuple[str, str]]:
    """(primary ns, replica ns), joined by a veth pair; removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("network namespaces need root and iproute2 (run .ci/setup as root)")
    tag = uuid.uuid4().hex[:6]
    pns, rns = f"nr-pri-{tag}", f"nr-rep-{tag}"
    pif, rif = f"nrp{tag}", f"nrr{tag}"
    ip("netns", "add", pns)
    ip("netns", "add", rns)
    try:
        ip("link", "add", pif, "type", "veth", "peer", "name", rif)
        ip("link", "set", pif, "netns", pns)
        ip("link", "set", rif, "netns", rns)
        ip("-n", pns, "addr", "add", f"{PRIMARY}/24", "dev", pif)
        ip("-n", rns, "addr", "add", f"{REPLICA}/24", "dev", rif)
        for ns, dev in ((pns, pif), (rns, rif)):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", dev, "up")
        yield pns, rns
    finally:
        for ns in (pns, rns):
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)


class NsBroker:
    """mosquitto in a namespace, on MQTT_PORT, with the given config lines."""

    def __init__(self, ns: str, root: Path, lines: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.ns, self.log = ns, root / "mosquitto.log"
        conf = root / "mosquitto.conf"
        conf.write_text(f"{lines}\nuser root\nlog_dest file {self.log}\nlog_type all\n")
        with (root / "stderr").open("wb") as stderr:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, "mosquitto", "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        wait_for(lambda: listening(ns, MQTT_PORT), f"mosquitto in {ns}", timeout=20)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc)


def shipped_bridge() -> str:
    """config/mosquitto-replica.conf.example as shipped, pointed at this test's primary."""
    text = (REPO / "config" / "mosquitto-replica.conf.example").read_text()
    text = re.sub(r"(?m)^address .*$", f"address {PRIMARY}:{MQTT_PORT}", text)
    # This test's primary broker is anonymous and without TLS.
    return re.sub(r"(?m)^(remote_username|remote_password|bridge_cafile) .*$", "", text)


@contextlib.contextmanager
def ns_ganesha(ns: str, root: Path, config_text: str) -> Iterator[None]:
    """ganesha.nfsd in a namespace on port 2049 with the config `netroot render ganesha`
    printed for that server (its recovery directory moved under root)."""
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "ganesha.conf"
    text = re.sub(r"RecoveryRoot = [^;]*;", f"RecoveryRoot = {root / 'recovery'};", config_text)
    conf.write_text(text)
    argv = nfs.ganesha_argv(conf, root / "ganesha.log", root / "ganesha.pid")
    server = subprocess.Popen(
        ["ip", "netns", "exec", ns, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: listening(ns, NFS_PORT), f"ganesha.nfsd in {ns}", timeout=60)
        yield
    finally:
        stop_process(server)


def nfs_read(ns: str, path: str) -> str:
    """A file read over NFSv4 from the namespace's own server (libnfs's nfs-cat: this host
    has no kernel NFS client)."""
    url = f"nfs://127.0.0.1/{path}?version=4&nfsport={NFS_PORT}"
    failed: list[str] = []

    def read() -> str | None:  # the server may still be finishing its start
        done = subprocess.run(["ip", "netns", "exec", ns, "nfs-cat", url],
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        failed.append(done.stderr)
        return done.stdout if done.returncode == 0 else None

    try:
        return wait_for(read, f"{url} from {ns}", timeout=60)
    except AssertionError:
        raise AssertionError(f"{url} from {ns}: {failed[-1]}") from None
