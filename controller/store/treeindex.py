"""The index of a root tree: one line per entry, sorted; its sha256 is the tree digest.

Line: JSON-quoted path, type, octal mode, uid, gid, size, then the content
sha256 (files), the link target (symlinks) or '-'. Timestamps are left out
so that the same content gives the same digest. An overlay-only version
derives its index from its base's index plus the entries it changed, instead
of hashing the whole tree again.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from controller.core.errors import VerifyError

Index = dict[str, str]  # path -> the rest of its line

_TYPES = {
    stat.S_IFREG: "f",
    stat.S_IFDIR: "d",
    stat.S_IFLNK: "l",
    stat.S_IFCHR: "c",
    stat.S_IFBLK: "b",
    stat.S_IFIFO: "p",
    stat.S_IFSOCK: "s",
}


def entry(st: os.stat_result, content: str) -> str:
    """The index fields of one entry (everything but the path)."""
    kind = _TYPES.get(stat.S_IFMT(st.st_mode), "?")
    size = st.st_size if kind == "f" else 0
    if kind in ("c", "b"):
        content = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return f"{kind}\t{stat.S_IMODE(st.st_mode):o}\t{st.st_uid}\t{st.st_gid}\t{size}\t{content}"


def file_sha256(path: Path | str, dir_fd: int | None = None) -> str:
    """sha256 of a file's content, never following a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _walk(directory: str, rel: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
    with os.scandir(directory) as it:
        entries = list(it)
    for item in entries:
        path = f"{rel}/{item.name}" if rel else item.name
        yield path, item
        if item.is_dir(follow_symlinks=False):
            yield from _walk(item.path, path)


def scan(root: Path) -> Index:
    """Index a whole tree, hashing every regular file."""
    index: Index = {".": entry(os.lstat(root), "-")}
    for path, item in _walk(os.fspath(root), ""):
        st = item.stat(follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            content = file_sha256(item.path)
        elif stat.S_ISLNK(st.st_mode):
            content = json.dumps(os.readlink(item.path))
        else:
            content = "-"
        index[path] = entry(st, content)
    return index


def render(index: Index) -> bytes:
    """The index file's bytes: sorted, one entry per line."""
    return "".join(f"{json.dumps(p)}\t{index[p]}\n" for p in sorted(index)).encode()


def parse(data: bytes) -> Index:
    """Read an index file back."""
    index: Index = {}
    for line in data.decode().splitlines():
        quoted, _, rest = line.partition("\t")
        index[json.loads(quoted)] = rest
    return index


def digest(data: bytes) -> str:
    """The tree digest: sha256 of the rendered index."""
    return hashlib.sha256(data).hexdigest()


def totals(index: Index) -> tuple[int, int]:
    """(number of entries, bytes in regular files)."""
    size = 0
    for rest in index.values():
        if rest.startswith("f"):
            size += int(rest.split("\t", 5)[4])
    return len(index), size


def drop_subtree(index: Index, path: str) -> None:
    """Forget path and everything below it (a whiteout or a type change)."""
    index.pop(path, None)
    prefix = path + "/"
    for key in [k for k in index if k.startswith(prefix)]:
        del index[key]


def compare(expected: bytes, actual: bytes, where: str) -> None:
    """Raise VerifyError naming the first differing path of two indexes."""
    if expected == actual:
        return
    old, new = parse(expected), parse(actual)
    for path in sorted(old.keys() | new.keys()):
        if old.get(path) != new.get(path):
            want, got = old.get(path, "absent"), new.get(path, "absent")
            raise VerifyError(f"{where}: {path}: expected {want!r}, found {got!r}")
    raise VerifyError(f"{where}: index differs")
