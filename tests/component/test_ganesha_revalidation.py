"""A file replaced by rename (how `netroot shell --live` lands its changes) is what
NFS-Ganesha serves next, at once, even while the old inode lives on in older
versions: the export netroot renders does not serve names from a stale cache.

Read with libnfs's `nfs-cat`, a user-space NFSv4 client, since this host has no
kernel NFS client; the node-side half (the overlay over a remounted NFS root) is
in tests/integration/test_boot_e2e.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import stop_process

from controller.render.exports import ExportSpec
from controller.render.ganesha import render_ganesha
from controller.serve import nfs

LABEL, VERSION = "demo", "20261204T050000.000Z-0123abcd"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def _ganesha(tmp_path: Path, rootfs: Path) -> Iterator[int]:
    port = _free_port()
    conf = tmp_path / "ganesha.conf"
    spec = ExportSpec(label=LABEL, path=str(rootfs), version=VERSION)
    conf.write_text(render_ganesha([spec], clients=["127.0.0.1"], insecure=True,
                                   bind_addr="127.0.0.1", port=port,
                                   recovery_root=str(tmp_path / "recovery")))  # fmt: skip
    argv = nfs.ganesha_argv(conf, tmp_path / "ganesha.log", tmp_path / "ganesha.pid")
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert server.poll() is None, (tmp_path / "ganesha.log").read_text()
            assert time.monotonic() < deadline, "ganesha.nfsd did not listen"
            time.sleep(0.2)
        yield port
    finally:
        stop_process(server)


def _read(port: int, path: str) -> str:
    url = f"nfs://127.0.0.1/{LABEL}/{VERSION}/{path}?version=4&nfsport={port}"
    deadline = time.monotonic() + 60  # the server may still be finishing its start
    while True:
        done = subprocess.run(["nfs-cat", url], capture_output=True, text=True, timeout=60,
                              check=False)  # fmt: skip
        if done.returncode == 0 or time.monotonic() > deadline:
            assert done.returncode == 0, done.stderr
            return done.stdout
        time.sleep(0.5)


@pytest.mark.skipif(not shutil.which("nfs-cat"), reason="libnfs-utils not installed")
def test_a_file_replaced_by_rename_is_served_at_once(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    motd = rootfs / "etc" / "motd"
    motd.write_text("as built\n")
    older = tmp_path / "older-version-motd"
    os.link(motd, older)  # an older version shares the inode, so it is never stale
    with _ganesha(tmp_path, rootfs) as port:
        assert _read(port, "etc/motd") == "as built\n"
        staged = motd.with_name(".motd.tmp")
        staged.write_text("live-edited\n")
        staged.rename(motd)
        # Once, at once: with Ganesha's default 60 s cache this read the old inode.
        assert _read(port, "etc/motd") == "live-edited\n"
    assert older.read_text() == "as built\n"
