"""The boot file server over real HTTP: curl and http.client against a built version.

Only a version's manifest artifacts are served; every other request (a path
outside the version directory, encoded or not, an unknown label or version, a
link out of the store, another method) gets 404 and an empty body.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import Workspace

from controller.config.load import load_config
from controller.serve.httpboot import BootHttpServer, Served


@dataclass
class Running:
    ws: Workspace
    port: int
    version: str
    served: list[Served]

    def request(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One request with the path sent exactly as given (no client normalisation)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for key, value in (headers or {}).items():
                conn.putheader(key, value)
            conn.endheaders()
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def url(self, name: str) -> str:
        return f"/boot/{self.ws.label}/{self.version}/{name}"

    def boot_file(self, name: str) -> bytes:
        return (self.ws.images() / self.version / "boot" / name).read_bytes()


@pytest.fixture
def server(workspace: Workspace) -> Iterator[Running]:
    workspace.run("build", "demo", "--activate")
    version = workspace.active()
    assert version is not None
    config = load_config(workspace.config)
    loop = asyncio.new_event_loop()
    started, stop = threading.Event(), asyncio.Event()
    served: list[Served] = []
    ports: list[int] = []

    async def serve() -> None:
        async with BootHttpServer(config, "127.0.0.1", 0, served.append) as running:
            ports.append(running.port)
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(30)
    yield Running(workspace, ports[0], version, served)
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)
    loop.close()


def test_curl_gets_the_version_files_with_their_manifest_hash_as_etag(
    server: Running, tmp_path: Path
) -> None:
    for name in ("vmlinuz", "initrd.img"):
        out = tmp_path / name
        done = subprocess.run(
            ["curl", "-sS", "-f", "-D", "-", "-o", str(out),
             f"http://127.0.0.1:{server.port}{server.url(name)}"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        body = out.read_bytes()
        assert body == server.boot_file(name)
        assert f'etag: "{hashlib.sha256(body).hexdigest()}"' in done.stdout.lower()
    assert [(s.name, s.phase) for s in server.served] == [
        ("vmlinuz", "start"), ("vmlinuz", "done"), ("initrd.img", "start"), ("initrd.img", "done"),
    ]  # fmt: skip


def test_curl_resumes_a_partial_download_with_a_range(server: Running, tmp_path: Path) -> None:
    whole = server.boot_file("initrd.img")
    out = tmp_path / "initrd.img"
    out.write_bytes(whole[: len(whole) // 3])
    subprocess.run(
        ["curl", "-sS", "-f", "-C", "-", "-o", str(out),
         f"http://127.0.0.1:{server.port}{server.url('initrd.img')}"],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    assert out.read_bytes() == whole


def test_ranges_head_and_conditional_requests(server: Running) -> None:
    whole = server.boot_file("vmlinuz")
    size = len(whole)
    status, headers, body = server.request(server.url("vmlinuz"), headers={"Range": "bytes=0-9"})
    assert (status, body, headers["Content-Range"]) == (206, whole[:10], f"bytes 0-9/{size}")
    status, _, body = server.request(server.url("vmlinuz"), headers={"Range": "bytes=-5"})
    assert (status, body) == (206, whole[-5:])
    status, _, body = server.request(server.url("vmlinuz"), headers={"Range": f"bytes={size}-"})
    assert (status, body) == (416, b"")
    etag = headers["ETag"]
    status, _, body = server.request(server.url("vmlinuz"), headers={"If-None-Match": etag})
    assert (status, body) == (304, b"")
    # a stale If-Range: the whole file, not the range of another one
    stale = {"Range": "bytes=0-9", "If-Range": '"0000"'}
    status, _, body = server.request(server.url("vmlinuz"), headers=stale)
    assert (status, body) == (200, whole)
    status, headers, body = server.request(server.url("vmlinuz"), method="HEAD")
    assert (status, int(headers["Content-Length"]), body) == (200, size, b"")


def test_everything_but_a_version_artifact_is_404_and_nothing_else(server: Running) -> None:
    label, version = server.ws.label, server.version
    store = server.ws.images() / version
    (store / "boot" / "secret").write_text("not an artifact\n")
    outside = server.ws.root / "outside"
    outside.write_text("outside the store\n")
    # a link out of the version directory, named like an artifact of a fake version
    fake = server.ws.images() / "20200101T000000.000Z-deadbeef"
    fake.mkdir()
    (fake / "manifest.json").write_bytes((store / "manifest.json").read_bytes())
    (fake / "boot").symlink_to(store / "boot")
    paths = [
        "/",
        "/boot",
        f"/boot/{label}",
        f"/boot/{label}/{version}",
        f"/boot/{label}/{version}/",
        f"/boot/{label}/{version}/secret",
        f"/boot/{label}/{version}/manifest.json",
        f"/boot/{label}/{version}/../{version}/vmlinuz",
        f"/boot/{label}/{version}/../../../../outside",
        f"/boot/{label}/{version}/%2e%2e/%2e%2e/%2e%2e/outside",
        f"/boot/{label}/{version}/%2E%2E%2F%2E%2E%2Foutside",
        f"/boot/{label}/{version}/vmlinu%7a",
        f"/boot/{label}/{version}//etc/passwd",
        f"/boot/{label}/{version}/..%5c..%5coutside",
        f"/boot/{label}/20991231T000000.000Z-00000000/vmlinuz",
        f"/boot/{label}/not-a-version/vmlinuz",
        f"/boot/{label}/{fake.name}/vmlinuz",
        f"/boot/other/{version}/vmlinuz",
        f"/boot/../{label}/{version}/vmlinuz",
        f"/./boot/{label}/{version}/vmlinuz",
        f"//boot/{label}/{version}/vmlinuz",
        f"http://127.0.0.1/boot/{label}/{version}/vmlinuz/../../../../../outside",
        os.fspath(outside),
        "/etc/passwd",
        "/api/v1/nodes",
        "/metrics",
    ]
    for path in paths:
        status, _, body = server.request(path)
        assert (path, status, body) == (path, 404, b"")
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        status, _, body = server.request(server.url("vmlinuz"), method=method)
        assert (method, status, body) == (method, 404, b"")
    # a swapped-in link where the artifact was: refused, not followed
    kernel = store / "boot" / "vmlinuz"
    kernel.unlink()
    kernel.symlink_to(outside)
    status, _, body = server.request(server.url("vmlinuz"))
    assert (status, body) == (404, b"")
