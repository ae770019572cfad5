"""Copying a version from another boot server into this store (docs/design.md §17).

The source hands out a version's manifest, its index, its boot files and the
content of each regular file; everything else (directories, symlinks, device
nodes, modes, owners) is made from the index. A file whose index line (type,
mode, owner, size, sha256) equals one of a version this store already holds
becomes a hard link to it, so an overlay edit fetches only what it changed.
The copy is staged, checked as a build's is not (every file hashed, the tree
compared with the index) and renamed into place like a build: a replica never
serves a version that differs from the primary's.

Everything the source says is hostile until checked: the manifest is parsed
by its model and must name the version asked for, the index must hash to the
manifest's digest, every path in it is checked before anything is made
(components, no '..', a parent that the index itself makes a directory), and
each fetched file must have the size and sha256 its line promises.

Files are fetched FETCHERS at a time: a root tree is thousands of small
files, and one at a time the copy waits a round trip for each (the bench,
bench/bench_replica.py, measured a first copy at 5.8 x an `rsync -aH`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from pydantic import ValidationError

from controller.core.errors import StoreError, VerifyError
from controller.core.ids import is_store_version
from controller.core.model import first_error
from controller.store import fsops, treeindex
from controller.store import versions as store
from controller.store.layout import LabelPaths
from controller.store.locking import label_lock
from controller.store.manifest import BootArtifact, Manifest
from controller.store.safepath import open_regular_beneath

MAX_MANIFEST = 1 << 20
# Extended attributes (file capabilities, POSIX ACLs) are not in the index: the source
# lists them for the whole tree as this JSON document, {path: {name: base64 value}}.
XATTRS_NAME = "xattrs.json"
MAX_XATTRS = 64 << 20
MAX_XATTR_VALUE = 64 << 10
XATTR_NAMESPACES = ("security.", "system.", "trusted.", "user.")
MAX_INDEX = 1 << 30
LINK_SOURCES = 3  # newest local versions searched for identical files
FETCHERS = 4  # files fetched at once, each by its own thread (and connection)
_KINDS = frozenset("fdlcbps")


class Source(Protocol):
    """Where a version's files come from: `rel` is relative to the version directory
    (manifest.json, files.idx, boot/<name>, rootfs/<path>). Its methods are called from
    FETCHERS threads at once."""

    def read(self, rel: str, limit: int) -> bytes:
        """The whole content of a small file (at most limit bytes, else StoreError)."""

    def copy(self, rel: str, out: BinaryIO) -> int | None:
        """Write a file's content to out; returns its mtime in ns when the source knows it."""


@dataclass(frozen=True)
class Replicated:
    """What one replication did."""

    manifest: Manifest
    held: bool  # the version was already here: nothing fetched
    fetched_files: int
    fetched_bytes: int
    linked_files: int
    seconds: float


@dataclass(frozen=True)
class Line:
    """One checked index line."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    content: str


def parse_line(path: str, rest: str) -> Line:
    """An index line's fields, checked; VerifyError naming the path otherwise."""
    fields = rest.split("\t", 5)
    try:
        kind, mode, uid, gid, size = fields[0], int(fields[1], 8), *map(int, fields[2:5])
        content = fields[5]
    except (IndexError, ValueError):
        raise VerifyError(f"files.idx: {path!r}: malformed line {rest[:80]!r}") from None
    if kind not in _KINDS or not 0 <= mode <= 0o7777 or min(uid, gid, size) < 0:
        raise VerifyError(f"files.idx: {path!r}: bad type, mode, owner or size in {rest[:80]!r}")
    if max(uid, gid) >= 2**32:
        raise VerifyError(f"files.idx: {path!r}: owner out of range")
    if kind == "f" and (len(content) != 64 or content.strip("0123456789abcdef")):
        raise VerifyError(f"files.idx: {path!r}: not a sha256: {content[:80]!r}")
    return Line(kind, mode, uid, gid, size, content)


def check_paths(index: treeindex.Index) -> list[tuple[str, Line]]:
    """Every entry, parents first, once each path and line are known to be safe to make."""
    if "." not in index or parse_line(".", index["."]).kind != "d":
        raise VerifyError("files.idx: the root entry '.' is missing or not a directory")
    entries: list[tuple[str, Line]] = []
    for path in sorted(index):
        line = parse_line(path, index[path])
        if path != ".":
            parts = path.split("/")
            if any(p in ("", ".", "..") for p in parts) or "\0" in path:
                raise VerifyError(f"files.idx: {path!r} is not a relative path inside the tree")
            parent = "/".join(parts[:-1]) or "."
            # Only a directory this copy itself makes may hold an entry: a symlink
            # earlier in the index can never redirect a later path out of the tree.
            if not index.get(parent, "").startswith("d\t"):
                raise VerifyError(f"files.idx: {path!r}: its parent is not a directory entry")
        entries.append((path, line))
    return entries


class _Hashing:
    """A writable file that hashes and counts what goes through it."""

    def __init__(self, fd: int) -> None:
        self.file = os.fdopen(fd, "wb", closefd=False)
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def _fetch(source: Source, rel: str, dest: Path, size: int, sha256: str) -> None:
    """Fetch one file into dest (new, never following a link), checked against its line."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        out = _Hashing(fd)
        mtime = source.copy(rel, out)  # type: ignore[arg-type]  # a file-like writer
        out.flush()
        if out.size != size or out.sha.hexdigest() != sha256:
            raise VerifyError(f"{rel}: fetched {out.size} bytes that do not match the manifest")
        if mtime is not None:
            os.utime(fd, ns=(mtime, mtime))
    finally:
        os.close(fd)


def _link_sources(paths: LabelPaths) -> tuple[dict[str, Path], dict[str, Path]]:
    """Files of the newest local versions by their index line, and boot files by sha256.

    A version edited in place (`shell --live`) no longer matches its index and is
    never a source; the final deep check would refuse a wrong link anyway.
    """
    files: dict[str, Path] = {}
    boot: dict[str, Path] = {}
    for version in reversed(store.version_ids(paths)[-LINK_SOURCES:]):
        try:
            manifest = store.read_manifest(paths, version)
            data = (paths.version(version) / store.INDEX_NAME).read_bytes()
        except (StoreError, OSError):
            continue
        if manifest.live_edits:
            continue
        for artifact in (manifest.kernel, manifest.initrd):
            boot.setdefault(artifact.sha256, paths.boot(version) / artifact.name)
        rootfs = paths.rootfs(version)
        for path, rest in treeindex.parse(data).items():
            if rest.startswith("f\t"):
                files.setdefault(rest, rootfs / path)
    return files, boot


def _link(src: Path | None, dest: Path) -> bool:
    if src is None:
        return False
    try:
        os.link(src, dest, follow_symlinks=False)
    except OSError:
        return False  # gone since, another filesystem, too many links: fetch it
    return True


def _boot_name(artifact: BootArtifact) -> str:
    if "/" in artifact.name or artifact.name in ("", ".", ".."):
        raise VerifyError(f"manifest.json: boot file name {artifact.name!r} is not a file name")
    return artifact.name


Xattrs = dict[str, dict[str, bytes]]


def _entry_xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}  # a filesystem without them has none to copy
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)}


def tree_xattrs(rootfs: Path) -> Xattrs:
    """Every entry's extended attributes, by index path ('.' the root)."""
    found: Xattrs = {}
    pending = [(os.fspath(rootfs), ".")]
    while pending:
        directory, rel = pending.pop()
        if attrs := _entry_xattrs(directory):
            found[rel] = attrs
        with os.scandir(directory) as it:
            for item in it:
                child = item.name if rel == "." else f"{rel}/{item.name}"
                if item.is_dir(follow_symlinks=False):
                    pending.append((item.path, child))
                elif attrs := _entry_xattrs(item.path):
                    found[child] = attrs
    return found


def render_xattrs(found: Xattrs) -> bytes:
    """The source's xattrs.json."""
    doc = {p: {n: base64.b64encode(v).decode() for n, v in a.items()} for p, a in found.items()}
    return json.dumps(doc, sort_keys=True).encode()


def parse_xattrs(data: bytes, index: treeindex.Index) -> Xattrs:
    """xattrs.json checked: paths of the index, known namespaces, bounded values."""
    refused = VerifyError(f"{XATTRS_NAME}: not a document of extended attributes")
    try:
        doc = json.loads(data)
    except ValueError:
        raise refused from None
    if not isinstance(doc, dict):
        raise refused
    found: Xattrs = {}
    for path, attrs in doc.items():
        if path not in index or not isinstance(attrs, dict):
            raise VerifyError(f"{XATTRS_NAME}: {str(path)[:80]!r} is not an entry of the index")
        found[path] = {name: _xattr_value(path, name, value) for name, value in attrs.items()}
    return found


def _xattr_value(path: str, name: object, value: object) -> bytes:
    if not isinstance(name, str) or not name.startswith(XATTR_NAMESPACES) or len(name) > 255:
        raise VerifyError(f"{XATTRS_NAME}: {path!r}: attribute {str(name)[:80]!r} refused")
    try:
        decoded = base64.b64decode(value, validate=True)  # type: ignore[arg-type]
    except (TypeError, ValueError, binascii.Error):
        raise VerifyError(f"{XATTRS_NAME}: {path!r}: {name}: not base64") from None
    if len(decoded) > MAX_XATTR_VALUE:
        raise VerifyError(f"{XATTRS_NAME}: {path!r}: {name} too large")
    return decoded


class _Copy:
    """One staged copy of a version, made entry by entry from the index."""

    def __init__(self, source: Source, staging: Path, paths: LabelPaths) -> None:
        self.source = source
        self.staging = staging
        self.rootfs = staging / "rootfs"
        self.files, self.boot = _link_sources(paths)
        self.fetched_files = self.fetched_bytes = self.linked = 0
        self.xattrs: Xattrs = {}
        self._counts = threading.Lock()
        self._failed = threading.Event()  # a fetch failed: the others stop early

    def file(self, rel: str, dest: Path, line_rest: str, size: int, sha256: str) -> None:
        # A hard link shares the inode's attributes too: only one that has none, for a
        # file that wants none (what wants some is fetched and given them).
        src = self.files.get(line_rest)
        plain = rel.removeprefix("rootfs/") not in self.xattrs
        if plain and src is not None and not _entry_xattrs(os.fspath(src)) and _link(src, dest):
            with self._counts:
                self.linked += 1
            return
        _fetch(self.source, rel, dest, size, sha256)
        with self._counts:
            self.fetched_files += 1
            self.fetched_bytes += size

    def tree(self, index: treeindex.Index, progress: Callable[[int, int], None] | None) -> None:
        entries = check_paths(index)
        dirs: list[tuple[Path, Line]] = []
        # Entries are made in index order (a parent before what it holds); regular files
        # go to the fetchers, which only ever write inside directories made already.
        with ThreadPoolExecutor(FETCHERS, thread_name_prefix="replica-fetch") as pool:
            files: list[Future[None]] = []
            try:
                for done, (path, line) in enumerate(entries, 1):
                    if self._failed.is_set():
                        break
                    dest = self.rootfs if path == "." else self.rootfs / path
                    if line.kind == "f":
                        files.append(pool.submit(self._regular, path, dest, line, index[path]))
                    else:
                        self._entry(path, dest, line, index[path])
                    if line.kind == "d":
                        dirs.append((dest, line))
                    if progress is not None and done % 1000 == 0:
                        progress(done, len(entries))
                for future in files:
                    future.result()  # the first failure, in index order
            except BaseException:
                self._failed.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        # Directories last, deepest first: a read-only directory is filled before it is closed.
        for dest, line in reversed(dirs):
            os.chown(dest, line.uid, line.gid)
            dest.chmod(line.mode)
        # Attributes after every chown, which drops file capabilities.
        for path, attrs in self.xattrs.items():
            dest = self.rootfs if path == "." else self.rootfs / path
            for name, value in attrs.items():
                os.setxattr(dest, name, value, follow_symlinks=False)

    def check_xattrs(self) -> None:
        """The copy's attributes are exactly the source's."""
        made = tree_xattrs(self.rootfs)
        if made != self.xattrs:
            differ = sorted(made.keys() ^ self.xattrs.keys()) or sorted(
                p for p in made if made[p] != self.xattrs.get(p)
            )
            raise VerifyError(f"{self.rootfs}: extended attributes differ at {differ[:3]}")

    def _regular(self, path: str, dest: Path, line: Line, rest: str) -> None:
        """One regular file, in a fetcher thread."""
        if self._failed.is_set():
            return
        try:
            self.file(f"rootfs/{path}", dest, rest, line.size, line.content)
            os.chown(dest, line.uid, line.gid, follow_symlinks=False)
            dest.chmod(line.mode)  # after chown, which clears set-id bits
        except BaseException:
            self._failed.set()
            raise

    def _entry(self, path: str, dest: Path, line: Line, rest: str) -> None:
        if line.kind == "d":
            dest.mkdir(0o700)
            return
        if line.kind == "l":
            try:
                target = json.loads(line.content)
            except ValueError:
                target = None
            if not isinstance(target, str) or not target or "\0" in target:
                raise VerifyError(f"files.idx: {path!r}: bad symlink target")
            os.symlink(target, dest)
            os.chown(dest, line.uid, line.gid, follow_symlinks=False)
            return
        kinds = {"c": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO, "s": stat.S_IFSOCK}
        device = 0
        if line.kind in ("c", "b"):
            major, _, minor = line.content.partition(":")
            if not (major.isdigit() and minor.isdigit()):
                raise VerifyError(f"files.idx: {path!r}: bad device number {line.content!r}")
            device = os.makedev(int(major), int(minor))
        os.mknod(dest, kinds[line.kind] | 0o600, device)
        os.chown(dest, line.uid, line.gid, follow_symlinks=False)
        dest.chmod(line.mode)

    def boot_files(self, manifest: Manifest) -> None:
        boot = self.staging / "boot"
        boot.mkdir()
        for artifact in (manifest.kernel, manifest.initrd):
            name = _boot_name(artifact)
            dest = boot / name
            if _link(self.boot.get(artifact.sha256), dest):
                self.linked += 1
            else:
                _fetch(self.source, f"boot/{name}", dest, artifact.size, artifact.sha256)
                self.fetched_files += 1
                self.fetched_bytes += artifact.size
            dest.chmod(0o644)


def read_manifest(source: Source, label: str, version: str) -> tuple[Manifest, bytes]:
    """The source's manifest of label/version, checked to name exactly that version."""
    data = source.read("manifest.json", MAX_MANIFEST)
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError as exc:
        err = first_error(exc)
        problem = f"{err.field}: {err.in_file}" if err.field else err.in_file
        raise VerifyError(f"{label}/{version}: manifest.json: {problem}") from None
    if manifest.label != label or manifest.version != version:
        raise VerifyError(
            f"{label}/{version}: the manifest names {manifest.label}/{manifest.version}"
        )
    return manifest, data


def replicate(
    paths: LabelPaths,
    version: str,
    source: Source,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> Replicated:
    """Copy one version from source into this store, unless it is here already.

    rw labels are never copied (controller.daemon.replication): a hard link
    shared with an older version is safe only because nothing writes in place.
    """
    t0 = time.monotonic()
    if not is_store_version(version):
        raise StoreError(f"{paths.label}: {version!r} is not a version id")
    if paths.version(version).is_dir():
        manifest = store.verify_version(paths, version, depth="index")
        return Replicated(manifest, True, 0, 0, 0, time.monotonic() - t0)
    manifest, manifest_bytes = read_manifest(source, paths.label, version)
    index_bytes = source.read(store.INDEX_NAME, MAX_INDEX)
    if treeindex.digest(index_bytes) != manifest.tree_digest:
        raise VerifyError(f"{paths.label}/{version}: files.idx does not match the manifest")
    try:
        index = treeindex.parse(index_bytes)
    except (ValueError, UnicodeDecodeError):
        raise VerifyError(f"{paths.label}/{version}: files.idx is not an index") from None
    staging = paths.staging / f"replica-{version}"
    paths.staging.mkdir(parents=True, exist_ok=True)
    fsops.remove_tree(staging)
    staging.mkdir(mode=0o700)
    try:
        copy = _Copy(source, staging, paths)
        copy.xattrs = parse_xattrs(source.read(XATTRS_NAME, MAX_XATTRS), index)
        copy.tree(index, progress)
        copy.boot_files(manifest)
        fsops.write_atomic(staging / store.INDEX_NAME, index_bytes, 0o600, durable=False)
        fsops.write_atomic(staging / "manifest.json", manifest_bytes, 0o644, durable=False)
        store.verify_tree(staging, manifest, depth="deep")
        copy.check_xattrs()
        _commit(paths, staging, version)
    except BaseException:
        fsops.remove_tree(staging)
        raise
    seconds = time.monotonic() - t0
    return Replicated(manifest, False, copy.fetched_files, copy.fetched_bytes, copy.linked, seconds)


def _commit(paths: LabelPaths, staging: Path, version: str) -> None:
    """Flush, then rename into images/<label>/<version> under the label lock, as a build."""
    fsops.syncfs(staging)
    with label_lock(paths):
        if paths.version(version).exists():
            fsops.remove_tree(staging)  # another replication committed it meanwhile
            return
        os.rename(staging, paths.version(version))
        fsops.fsync_dir(paths.images)


def open_version_file(paths: LabelPaths, version: str, rel: str) -> int | None:
    """A read descriptor of one file another server may fetch of a committed version, or None.

    rel is manifest.json, files.idx, boot/<name> or rootfs/<path>; the file is
    reached through real directories only (a symlink anywhere on the way is
    None: the index carries symlinks, nobody follows them here).
    """
    if not is_store_version(version) or "\0" in rel:
        return None
    head, _, rest = rel.partition("/")
    if rel in ("manifest.json", store.INDEX_NAME) or (head == "boot" and rest and "/" not in rest):
        return open_regular_beneath(paths.version(version), rel)
    if head == "rootfs" and rest:
        return open_regular_beneath(paths.rootfs(version), rest)
    return None
