"""The files of committed versions, for replica boot servers (docs/design.md §17).

GET /api/v1/labels/<label>/versions/<version>/files/<rel>, where rel is
manifest.json, files.idx, boot/<name> or rootfs/<path>: the bytes of that
regular file, reached through real directories only (controller.store.replica
decides what may be read), with its modification time in
`X-Netroot-Mtime-Ns`; xattrs.json: the extended attributes of the whole tree
(file capabilities, ACLs: the index does not hold them). Anything else, a
label not configured or a version not committed, is 404 and nothing more.
The route sits behind the API's bearer token, like every other: an image
holds what only its nodes may read.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from aiohttp import web

from controller.config.models import Config
from controller.core.ids import is_store_version
from controller.store import replica
from controller.store.layout import label_paths

CHUNK = 1 << 20
MTIME_HEADER = "X-Netroot-Mtime-Ns"


@dataclass(frozen=True)
class _Opened:
    fd: int  # -1 once a small file's bytes are read (and its descriptor closed)
    size: int
    mtime_ns: int
    body: bytes | None  # a small file's bytes


def _open(config: Config, label: str, version: str, rel: str) -> _Opened | None:
    """The file, or None; a small one read and closed in the same thread hop (a root
    tree is thousands of small files, and a replica fetches them one request each)."""
    if label not in config.labels:
        return None
    fd = replica.open_version_file(label_paths(config, label), version, rel)
    if fd is None:
        return None
    try:
        info = os.fstat(fd)
        if info.st_size > CHUNK:
            return _Opened(fd, info.st_size, info.st_mtime_ns, None)
        body = os.pread(fd, info.st_size, 0)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return _Opened(-1, info.st_size, info.st_mtime_ns, body)


def _xattrs(config: Config, label: str, version: str) -> bytes | None:
    if label not in config.labels or not is_store_version(version):
        return None
    rootfs = label_paths(config, label).rootfs(version)
    if not rootfs.is_dir() or rootfs.is_symlink():
        return None
    return replica.render_xattrs(replica.tree_xattrs(rootfs))


async def send_version_file(request: web.Request, config: Config) -> web.StreamResponse:
    """The handler's body: one file of a committed version, or 404."""
    match = request.match_info
    if match["rel"] == replica.XATTRS_NAME:  # not a file: the tree's attributes, listed now
        doc = await asyncio.to_thread(_xattrs, config, match["label"], match["version"])
        if doc is None:
            return web.json_response({"error": "no such committed version"}, status=404)
        return web.Response(body=doc, content_type="application/json")
    opened = await asyncio.to_thread(_open, config, match["label"], match["version"], match["rel"])
    if opened is None:
        return web.json_response({"error": "no such file in a committed version"}, status=404)
    headers = {MTIME_HEADER: str(opened.mtime_ns), "Content-Type": "application/octet-stream"}
    if opened.body is not None:
        # Most files of a root tree are small: one read, one response.
        return web.Response(body=opened.body, headers=headers)
    fd, size = opened.fd, opened.size
    try:
        response = web.StreamResponse(headers=headers)
        response.content_length = size
        await response.prepare(request)
        offset = 0
        while offset < size:
            chunk = await asyncio.to_thread(os.pread, fd, min(CHUNK, size - offset), offset)
            if not chunk:
                break  # shrank: the client sees a short body and refuses the file
            await response.write(chunk)
            offset += len(chunk)
        await response.write_eof()
        return response
    finally:
        os.close(fd)
