"""A version copied from one store into another (controller.store.replica), as a replica does.

Two workspaces, each its own store; the primary's versions are built by the
CLI, the copy is made from the primary's version directory, and the result
is checked the way a user would: `netroot verify --deep` on the replica, the
same index, hard links to the previous version for what did not change. A
hostile source (a tampered file, an index that climbs out of the tree or
through a symlink) is refused and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import threading
from pathlib import Path
from typing import BinaryIO

import pytest
from aiohttp import web
from support import Workspace, free_port, make_root_tree

from controller.config.load import load_config
from controller.config.models import Config
from controller.core.errors import StoreError, VerifyError
from controller.daemon.replicafetch import HttpSource
from controller.daemon.web import versionfiles
from controller.daemon.web.openapi import API
from controller.daemon.web.server import build_app
from controller.store import replica, treeindex
from controller.store.layout import LabelPaths, label_paths


class DirectorySource:
    """A version directory of another store on this machine: the primary's side of the
    copy without HTTP (the HTTP source is tests/integration/test_replica.py's)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, rel: str) -> Path:
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise StoreError(f"{rel!r} is not a path inside a version")
        return self.directory.joinpath(*parts)

    def read(self, rel: str, limit: int) -> bytes:
        """The file's bytes, refused beyond limit (xattrs.json: made from the tree)."""
        if rel == replica.XATTRS_NAME:
            return replica.render_xattrs(replica.tree_xattrs(self.directory / "rootfs"))
        with self._open(rel) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise StoreError(f"{rel}: larger than {limit} bytes")
        return data

    def copy(self, rel: str, out: BinaryIO) -> int | None:
        """Stream the file into out; its mtime."""
        with self._open(rel) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                out.write(chunk)
            return os.fstat(f.fileno()).st_mtime_ns

    def _open(self, rel: str) -> BinaryIO:
        path = self._path(rel)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StoreError(f"{path}: no such file") from None
        return os.fdopen(fd, "rb")


def _store(ws: Workspace) -> LabelPaths:
    return label_paths(load_config(ws.config), ws.label)


def _versions(ws: Workspace) -> list[str]:
    out = ws.run("versions", ws.label, "--json").stdout
    return [row["version"] for row in json.loads(out)]


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Workspace, Workspace]:
    primary = Workspace(tmp_path / "primary")
    make_root_tree(primary.tree, files=300)
    (primary.tree / "usr" / "bin" / "tool").write_bytes(b"#!/bin/sh\n")
    (primary.tree / "usr" / "bin" / "tool").chmod(0o4755)
    os.symlink("../usr/bin/tool", primary.tree / "etc" / "tool-link")
    os.mkfifo(primary.tree / "var" / "lib" / "fifo")
    os.chown(primary.tree / "etc" / "hostname", 1234, 5678)
    # What the index does not hold: a file capability (after chown, which clears it) and
    # user attributes on a file and a directory.
    subprocess.run(["setcap", "cap_net_raw=ep", primary.tree / "usr" / "bin" / "tool"], check=True)
    os.setxattr(primary.tree / "etc" / "hostname", "user.netroot", b"file")
    os.setxattr(primary.tree / "var" / "lib", "user.netroot", b"dir")
    primary.write()
    replica_ws = Workspace(tmp_path / "replica").write()
    return primary, replica_ws


def test_a_copied_version_verifies_deep_and_links_what_did_not_change(
    pair: tuple[Workspace, Workspace],
) -> None:
    primary, rep = pair
    primary.run("build", primary.label, "--activate")
    (first,) = _versions(primary)
    src = _store(primary)
    done = replica.replicate(_store(rep), first, DirectorySource(src.version(first)))
    assert not done.held and done.linked_files == 0
    index = treeindex.parse((src.version(first) / "files.idx").read_bytes())
    regular = sum(rest.startswith("f\t") for rest in index.values())
    assert done.fetched_files == regular + 2  # and the kernel and initramfs
    rep.run("verify", rep.label, first, "--deep")
    dst = _store(rep)
    assert (dst.version(first) / "files.idx").read_bytes() == (
        src.version(first) / "files.idx"
    ).read_bytes()
    tool = dst.rootfs(first) / "usr" / "bin" / "tool"
    assert oct(tool.stat().st_mode & 0o7777) == oct(0o4755)
    assert os.readlink(dst.rootfs(first) / "etc" / "tool-link") == "../usr/bin/tool"
    hostname = (dst.rootfs(first) / "etc" / "hostname").stat()
    assert (hostname.st_uid, hostname.st_gid) == (1234, 5678)
    assert replica.tree_xattrs(dst.rootfs(first)) == replica.tree_xattrs(src.rootfs(first))
    assert os.getxattr(tool, "security.capability")
    assert os.getxattr(dst.rootfs(first) / "var" / "lib", "user.netroot") == b"dir"
    # Modification times travel with the content (a .pyc names its source's mtime).
    assert hostname.st_mtime_ns == (src.rootfs(first) / "etc" / "hostname").stat().st_mtime_ns

    # A one-file overlay edit: only what differs from the first version is fetched (the
    # edited file and the version's own stamp), none of the boot files.
    (primary.overlays / "common" / "etc").mkdir(parents=True)
    (primary.overlays / "common" / "etc" / "motd").write_text("edited\n")
    primary.run("build", primary.label, "--overlays-only")
    second = _versions(primary)[-1]
    done = replica.replicate(dst, second, DirectorySource(src.version(second)))
    changed = {
        path: rest
        for path, rest in treeindex.parse((src.version(second) / "files.idx").read_bytes()).items()
        if rest.startswith("f\t") and rest not in index.values()
    }
    assert "etc/motd" in changed and len(changed) <= 3, changed
    # ... and the files with attributes: a link would share them with the old version
    with_attrs = {"etc/hostname", "usr/bin/tool"}
    assert done.fetched_files == len(changed.keys() | with_attrs), done
    second_index = treeindex.parse((src.version(second) / "files.idx").read_bytes())
    fetched = changed.keys() | with_attrs
    assert done.fetched_bytes == sum(int(second_index[p].split("\t")[4]) for p in fetched)
    assert done.linked_files > 300
    rep.run("verify", rep.label, second, "--deep")
    old = dst.rootfs(first) / "usr" / "lib" / "pkg0000" / "file000007"
    new = dst.rootfs(second) / "usr" / "lib" / "pkg0000" / "file000007"
    assert old.stat().st_ino == new.stat().st_ino

    again = replica.replicate(dst, second, DirectorySource(src.version(second)))
    assert again.held and again.fetched_files == 0


class Tampered:
    """The primary's version, with one file's bytes or the index (and manifest digest) changed."""

    def __init__(
        self,
        directory: Path,
        *,
        files: dict[str, bytes],
        index: bytes | None = None,
        xattrs: bytes | None = None,
    ):
        self.inner = DirectorySource(directory)
        self.files = files
        self.index = index
        self.xattrs = xattrs

    def read(self, rel: str, limit: int) -> bytes:
        if self.xattrs is not None and rel == replica.XATTRS_NAME:
            return self.xattrs
        data = self.inner.read(rel, limit)
        if self.index is not None and rel == "files.idx":
            return self.index
        if self.index is not None and rel == "manifest.json":
            manifest = json.loads(data)
            manifest["tree_digest"] = hashlib.sha256(self.index).hexdigest()
            manifest["file_count"] = self.index.count(b"\n")
            return json.dumps(manifest).encode()
        return data

    def copy(self, rel: str, out: BinaryIO) -> int | None:
        if rel in self.files:
            out.write(self.files[rel])
            return None
        return self.inner.copy(rel, out)


def _hostile(rep: Workspace, version: str, source: object) -> str:
    dst = _store(rep)
    with pytest.raises(VerifyError) as err:
        replica.replicate(dst, version, source)  # type: ignore[arg-type]
    assert not dst.version(version).exists()
    assert not (dst.staging / f"replica-{version}").exists()
    return str(err.value)


def test_a_hostile_source_is_refused_and_leaves_nothing(
    pair: tuple[Workspace, Workspace], tmp_path: Path
) -> None:
    primary, rep = pair
    primary.run("build", primary.label)
    (version,) = _versions(primary)
    src = _store(primary).version(version)
    error = _hostile(rep, version, Tampered(src, files={"rootfs/etc/hostname": b"evil\n"}))
    assert "rootfs/etc/hostname" in error

    index = treeindex.parse((src / "files.idx").read_bytes())
    outside = tmp_path / "escaped"
    climbing = dict(index)
    climbing[f"../../../../../../../../..{outside}"] = index["etc/hostname"]
    error = _hostile(rep, version, Tampered(src, files={}, index=treeindex.render(climbing)))
    assert "not a relative path inside the tree" in error
    through_link = dict(index)
    through_link["etc/escape"] = f"l\t777\t0\t0\t0\t{json.dumps(str(tmp_path))}"
    through_link["etc/escape/planted"] = index["etc/hostname"]
    error = _hostile(rep, version, Tampered(src, files={}, index=treeindex.render(through_link)))
    assert "parent is not a directory" in error
    assert not (tmp_path / "planted").exists() and not outside.exists()
    for doc, said in (
        (b'{"etc/hostname": {"evil.ns": "AA=="}}', "attribute 'evil.ns' refused"),
        (b'{"../../etc/passwd": {"user.x": "AA=="}}', "is not an entry of the index"),
        (b'{"etc/hostname": {"user.x": "not base64!"}}', "not base64"),
        (b"[]", "not a document of extended attributes"),
    ):
        error = _hostile(rep, version, Tampered(src, files={}, xattrs=doc))
        assert said in error, error


class FileServer:
    """The primary's version files route (controller.daemon.web.versionfiles) behind the
    API's bearer check, on a free loopback port, in a thread of its own; it notes the
    client port of every request."""

    def __init__(self, config: Config, token: str) -> None:
        self.config, self.token = config, token
        self.port = free_port()
        self.peers: set[int] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(20)

    async def _start(self) -> web.AppRunner:
        async def handler(request: web.Request) -> web.StreamResponse:
            peer = request.transport.get_extra_info("peername") if request.transport else None
            if peer is not None:
                self.peers.add(peer[1])
            return await versionfiles.send_version_file(request, self.config)

        route = f"{API}/labels/{{label}}/versions/{{version}}/files/{{rel:.+}}"
        runner = web.AppRunner(build_app([(route, handler)], self.token))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(20)
        self.loop.close()


def test_a_copy_over_the_primarys_http_api_uses_several_connections_and_verifies(
    pair: tuple[Workspace, Workspace],
) -> None:
    """The replica's real source: files fetched FETCHERS at a time, each fetcher on its
    own persistent connection; a file larger than one chunk streamed; the copy checked
    deep. A missing file and a wrong token are one-line errors naming the URL."""
    primary, rep = pair
    big = os.urandom(3 * versionfiles.CHUNK + 17)
    (primary.tree / "usr" / "lib" / "big.bin").write_bytes(big)
    primary.run("build", primary.label, "--activate")
    (version,) = _versions(primary)
    server = FileServer(load_config(primary.config), "replica-token-0123456789")
    try:
        source = HttpSource(server.url, server.token, rep.label, version)
        try:
            done = replica.replicate(_store(rep), version, source)
        finally:
            source.close()
        rep.run("verify", rep.label, version, "--deep")
        assert (_store(rep).rootfs(version) / "usr" / "lib" / "big.bin").read_bytes() == big
        assert done.fetched_files > 300 and done.linked_files == 0
        assert 1 < len(server.peers) <= replica.FETCHERS + 1  # + the manifest's and index's

        missing = HttpSource(server.url, server.token, rep.label, version)
        with pytest.raises(StoreError) as err:
            missing.read("rootfs/etc/no-such-file", 100)
        assert "HTTP 404" in str(err.value) and "rootfs/etc/no-such-file" in str(err.value)
        wrong = HttpSource(server.url, "not-the-token", rep.label, version)
        with pytest.raises(StoreError) as err:
            wrong.read("manifest.json", 1 << 20)
        assert "HTTP 401" in str(err.value)
        missing.close()
        wrong.close()
    finally:
        server.close()


def test_a_failed_fetch_stops_the_copy_and_leaves_nothing(
    pair: tuple[Workspace, Workspace],
) -> None:
    """One fetcher's failure ends the copy: the others stop early, the staging goes."""
    primary, rep = pair
    primary.run("build", primary.label)
    (version,) = _versions(primary)
    src = _store(primary).version(version)
    calls: list[str] = []

    class Failing(DirectorySource):
        def copy(self, rel: str, out: BinaryIO) -> int | None:
            calls.append(rel)
            if rel == "rootfs/etc/hostname":
                raise StoreError(f"{rel}: HTTP 500: boom")
            return super().copy(rel, out)

    dst = _store(rep)
    with pytest.raises(StoreError, match="boom"):
        replica.replicate(dst, version, Failing(src))
    assert not dst.version(version).exists()
    assert not (dst.staging / f"replica-{version}").exists()
    index = treeindex.parse((src / "files.idx").read_bytes())
    regular = sum(rest.startswith("f\t") for rest in index.values())
    assert len(calls) < regular  # the rest was never fetched
