"""The nbd transport as far as this machine allows: squashfs, nbd-server, a client reading it.

The host kernel has no nbd driver in these containers, so the export is read
with qemu's userspace NBD client (qemu-img), which speaks the same protocol a
node's nbd-client does. Booting a node from it needs nbd-client and dracut's
nbd module in the image, which debian12 does not carry: not tried here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from support import Workspace

from controller.config.load import load_config
from controller.render import boot_target
from controller.serve import nbd

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_version_squashfs_served_by_nbd_server_reads_back_identical(
    workspace: Workspace, tmp_path: Path
) -> None:
    for tool in ("mksquashfs", "unsquashfs", "nbd-server", "qemu-img"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run .ci/setup")
    workspace.run("build", "demo", "--activate")
    config = load_config(workspace.config)
    version = workspace.active()
    assert version is not None
    image = nbd.make_squashfs(config, "demo", version)
    assert image.read_bytes()[:4] == b"hsqs"
    assert nbd.make_squashfs(config, "demo", version) == image  # built once per version
    listed = subprocess.run(["unsquashfs", "-cat", str(image), "etc/netroot/version"],
                            capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    assert listed.stdout == f"{version}\n"

    port = free_port()
    name = nbd.export_name("demo", version)
    conf = tmp_path / "nbd.conf"
    conf.write_text(nbd.render_nbd_server([(name, image)], port=port, listen="127.0.0.1"))
    pid_file = tmp_path / "nbd.pid"
    # nbd-server daemonizes: it is stopped by the pid it writes
    subprocess.run(nbd.nbd_server_argv(conf, pid_file), check=True, timeout=60,
                   capture_output=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        copy = tmp_path / "copy.sqfs"
        subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "raw",
             f"nbd://127.0.0.1:{port}/{name}", str(copy)],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        # an nbd export is whole sectors: the image, then zero padding at most
        data = copy.read_bytes()
        assert data[: image.stat().st_size] == image.read_bytes()
        assert not data[image.stat().st_size :].strip(b"\0")
        # read-only: a client cannot write the version
        write = subprocess.run(
            ["qemu-io", "-f", "raw", "-c", "write 0 512", f"nbd://127.0.0.1:{port}/{name}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert write.returncode != 0 or "failed" in (write.stdout + write.stderr).lower()
        assert sha256(image) == hashlib.sha256(data[: image.stat().st_size]).hexdigest()
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
    cmdline = nbd.nbd_cmdline(boot_target(config, "demo", version), server="10.0.2.2")
    assert cmdline.startswith(f"root=nbd:10.0.2.2:10809/{name}:squashfs:ro ro ")
    assert " rootovl " in cmdline
