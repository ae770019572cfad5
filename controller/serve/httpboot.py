"""Kernel and initramfs over HTTP: GET and HEAD of /boot/LABEL/VERSION/NAME, nothing else.

iPXE loads a version's boot files from here (docs/design.md §8), at the
speed of TCP rather than TFTP's one block per round trip. The server is
separate from the daemon's API listener: nodes fetch without a token, so
nothing but a version's manifest artifacts is reachable. A request for any
other path, an unknown label or version, a name the manifest does not list,
an encoded character or a file that is not a regular file inside its
version directory gets 404 and an empty body. Versions never change once
built, so the ETag is the artifact's sha256 from the manifest; single byte
ranges are honoured (iPXE and curl resume with them).

One module serves both the daemon (daemon.bootfiles) and `netroot boot`
(vm.servers), each on its own loopback or boot-network listener.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aiohttp import web

from controller.config.models import Config
from controller.core.errors import NetrootError
from controller.core.ids import is_label, is_store_version
from controller.core.log import get_logger
from controller.render.cmdline import BOOT_URL_DIR
from controller.store.layout import label_paths
from controller.store.manifest import Manifest
from controller.store.versions import read_manifest

log = get_logger("httpboot")

CHUNK = 1 << 20  # bytes read per step: large enough that TCP, not the loop, is the limit
Phase = Literal["start", "done"]


@dataclass(frozen=True)
class Served:
    """A boot file request seen by the server (what `netroot boot` times)."""

    label: str
    version: str
    name: str
    phase: Phase


Observer = Callable[[Served], None]


@dataclass(frozen=True)
class BootFile:
    """A version's artifact a request names."""

    label: str
    version: str
    name: str
    path: Path
    etag: str


def _manifest(config: Config, label: str, version: str) -> Manifest | None:
    try:
        return read_manifest(label_paths(config, label), version)
    except NetrootError:
        return None


def find(config: Config, raw_path: str) -> BootFile | None:  # noqa: PLR0911 - one 404 per rule
    """The artifact /boot/LABEL/VERSION/NAME names, or None: anything else is 404."""
    path, _, _query = raw_path.partition("?")
    # No decoding at all: real names need none, so `%2e%2e` and friends are
    # never turned into something else.
    if "%" in path or "\\" in path:
        return None
    parts = path.split("/")
    if len(parts) != 5 or parts[0] != "" or parts[1] != BOOT_URL_DIR:
        return None
    _, _, label, version, name = parts
    if not (is_label(label) and label in config.labels and is_store_version(version)):
        return None
    manifest = _manifest(config, label, version)
    if manifest is None or manifest.label != label or manifest.version != version:
        return None
    artifact = next((a for a in (manifest.kernel, manifest.initrd) if a.name == name), None)
    if artifact is None:
        return None
    paths = label_paths(config, label)
    boot_dir = paths.boot(version)
    # The version directory and boot/ must be real directories of the store,
    # not links to elsewhere; the file is opened with O_NOFOLLOW below.
    try:
        if boot_dir.resolve(strict=True) != paths.images.resolve(strict=True) / version / "boot":
            return None
    except OSError:
        return None
    return BootFile(label, version, name, boot_dir / name, f'"{artifact.sha256}"')


ByteRange = tuple[int, int]  # first and last byte, inclusive


def parse_range(  # noqa: PLR0911 - one answer per case of RFC 9110 §14.1.2
    header: str, size: int
) -> ByteRange | Literal["unsatisfiable"] | None:
    """One `bytes=` range of a file of size bytes; None: serve it whole (no or several ranges)."""
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # several ranges: the whole file is a valid answer (RFC 9110 §14.2)
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash or not (first_text.isdigit() or last_text.isdigit()):
        return None
    if not first_text:  # the last N bytes
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    if last_text and not last_text.isdigit():
        return None
    first = int(first_text)
    last = min(int(last_text), size - 1) if last_text else size - 1
    if first >= size or last < first:
        return "unsatisfiable"
    return first, last


def _not_found() -> web.Response:
    return web.Response(status=404)


def _matches(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def _open(file: BootFile) -> tuple[int, int] | None:
    """(fd, size) of a regular file opened without following a link, or None."""
    try:
        fd = os.open(file.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    return fd, info.st_size


ConfigSource = Callable[[], Config]  # the daemon's config changes on a reload


def make_app(config: ConfigSource, observer: Observer | None = None) -> web.Application:
    """The boot file application: one catch-all route, so every other request is a 404."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return _not_found()
        file = find(config(), request.raw_path)
        opened = None if file is None else _open(file)
        if file is None or opened is None:
            return _not_found()
        fd, size = opened
        try:
            return await _send(request, file, fd, size, observer)
        finally:
            os.close(fd)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def _send(
    request: web.Request, file: BootFile, fd: int, size: int, observer: Observer | None
) -> web.StreamResponse:
    headers = {
        "ETag": file.etag,
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        # A version's files never change: a cache may keep them for good.
        "Cache-Control": "public, max-age=31536000, immutable",
    }
    if _matches(request.headers.get("If-None-Match"), file.etag):
        return web.Response(status=304, headers=headers)
    first, last, status = 0, size - 1, 200
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if range_header is not None and (if_range is None or if_range.strip() == file.etag):
        wanted = parse_range(range_header, size)
        if wanted == "unsatisfiable":
            headers["Content-Range"] = f"bytes */{size}"
            return web.Response(status=416, headers=headers)
        if wanted is not None:
            (first, last), status = wanted, 206
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = last - first + 1 if size else 0
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    if observer is not None:
        observer(Served(file.label, file.version, file.name, "start"))
    offset = first
    while offset <= last:
        chunk = await asyncio.to_thread(os.pread, fd, min(CHUNK, last - offset + 1), offset)
        if not chunk:
            break  # the file shrank: the client sees a short body, never other bytes
        await response.write(chunk)
        offset += len(chunk)
    await response.write_eof()
    if observer is not None:
        observer(Served(file.label, file.version, file.name, "done"))
    return response


class BootHttpServer:
    """The boot file server on one listener, as an async context manager."""

    def __init__(
        self, config: Config | ConfigSource, host: str, port: int, observer: Observer | None = None
    ) -> None:
        self.config: ConfigSource = config if callable(config) else lambda: config
        self.host = host
        self.port = port  # 0: a free one, known after entering
        self.observer = observer
        self.runner: web.AppRunner | None = None

    async def __aenter__(self) -> BootHttpServer:
        runner = web.AppRunner(make_app(self.config, self.observer), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        if self.port == 0:
            self.port = int(runner.addresses[0][1])
        self.runner = runner
        log.info("boot files over http", host=self.host, port=self.port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
