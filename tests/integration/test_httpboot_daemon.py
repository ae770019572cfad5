"""The daemon's boot file listener: kernel and initramfs for iPXE, never the API, and the
iPXE menus the activation renders load from it."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration.harness import Broker, Controller
from support import Workspace, free_port, make_root_tree

pytestmark = pytest.mark.integration


@pytest.fixture
def lab(tmp_path: Path, broker: Broker) -> Iterator[tuple[Workspace, int, int]]:
    api, boot = free_port(), free_port()
    extra = f'{broker.mqtt_config()}\n[boot_http]\nlisten = "127.0.0.1:{boot}"\n'
    ws = Workspace(tmp_path, extra_config=extra, http=f'listen = "127.0.0.1:{api}"')
    make_root_tree(ws.tree)
    ws.write()
    ws.run("build", "demo", "--activate")
    controller = Controller(ws)
    controller.start()
    yield ws, api, boot
    controller.cleanup()


def curl(url: str, *extra: str) -> tuple[int, bytes]:
    done = subprocess.run(
        ["curl", "-sS", "--path-as-is", "-o", "-", "-w", "\n%{http_code}", *extra, url],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    body, _, code = done.stdout.rpartition(b"\n")
    return int(code), body


def test_boot_files_on_their_own_listener_and_ipxe_menus_load_from_it(
    lab: tuple[Workspace, int, int],
) -> None:
    ws, api, boot = lab
    version = ws.active()
    assert version is not None
    kernel = (ws.images() / version / "boot" / "vmlinuz").read_bytes()
    url = f"http://127.0.0.1:{boot}/boot/demo/{version}/vmlinuz"
    code, body = curl(url)
    assert (code, hashlib.sha256(body).hexdigest()) == (200, hashlib.sha256(kernel).hexdigest())
    # the API is not on the boot listener, and boot files are not on the API's
    assert curl(f"http://127.0.0.1:{boot}/api/v1/labels") == (404, b"")
    assert curl(f"http://127.0.0.1:{boot}/metrics") == (404, b"")
    assert curl(f"http://127.0.0.1:{boot}/boot/demo/{version}/../../../netroot.toml") == (404, b"")
    assert curl(f"http://127.0.0.1:{api}/boot/demo/{version}/vmlinuz")[0] == 404
    script = (ws.root / "tftp" / "ipxe" / "default.ipxe").read_text()
    assert f"kernel http://10.0.2.2:{boot}/boot/demo/{version}/vmlinuz " in script
    assert f"initrd http://10.0.2.2:{boot}/boot/demo/{version}/initrd.img" in script
    # pxelinux keeps TFTP
    pxelinux = (ws.root / "tftp" / "pxelinux.cfg" / "default").read_text()
    assert f"KERNEL netroot/_versions/demo/{version}/vmlinuz" in pxelinux
