"""Recording what one real boot reads from a version's NFS export (bench_storm --record).

Method: every entry of the version's rootfs gets an atime of 1970 and its
page cache dropped; one VM boots over PXE to the agent's report, its root
served by the loopback Ganesha `netroot boot` starts (VFS FSAL: it reads the
tree through the host filesystem). Then an entry whose atime moved was read
(relatime updates an atime older than the ctime): a file was read, a
directory listed, a symlink followed. A file's pages now in the host's page
cache are the byte ranges read (with the host's own read-ahead: a slight
over-approximation). Read order is the order of first access (atime).
Files the boot reads from TFTP (kernel, initramfs) are excluded: they are not
part of the NFS root's load.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import stat
import threading
from pathlib import Path
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")
OLD_ATIME_NS = 1_000_000_000  # 1970: any read after the reset moves it

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]  # fmt: skip
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
MAP_FAILED = ctypes.c_void_p(-1).value


def _walk(root: Path) -> list[tuple[Path, os.stat_result]]:
    """Every entry with its lstat, each taken before the entry is listed or followed.

    Listing a directory moves its atime, and so does following a symlink
    (os.walk's is_dir does): the walk must not record its own reads.
    """
    found, pending = [], [root]
    while pending:
        directory = pending.pop()
        found.append((directory, directory.lstat()))
        with os.scandir(directory) as listing:
            for entry in listing:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                else:
                    found.append((Path(entry.path), entry.stat(follow_symlinks=False)))
    return found


def reset(rootfs: Path, skip: set[tuple[int, int]]) -> int:
    """Old atimes on every entry, page cache dropped for every file; entries reset."""
    os.sync()  # fadvise cannot drop dirty pages
    entries = _walk(rootfs)
    for path, st in entries:
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in skip:
            fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        os.utime(path, ns=(OLD_ATIME_NS, st.st_mtime_ns), follow_symlinks=False)
    return len(entries)


def resident_ranges(path: Path, size: int) -> list[tuple[int, int]]:
    """(offset, length) runs of the file's pages in the page cache (mincore)."""
    if size == 0:
        return []
    fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, MAP_FAILED):
            raise OSError(ctypes.get_errno(), f"mmap {path}")
        pages = (size + PAGE - 1) // PAGE
        vec = (ctypes.c_ubyte * pages)()
        try:
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore {path}")
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)
    runs: list[tuple[int, int]] = []
    for page, flags in enumerate(vec):
        if flags & 1:
            start = page * PAGE
            if runs and runs[-1][0] + runs[-1][1] == start:
                runs[-1] = (runs[-1][0], runs[-1][1] + PAGE)
            else:
                runs.append((start, PAGE))
    return [(offset, min(length, size - offset)) for offset, length in runs]


def collect(rootfs: Path, skip: set[tuple[int, int]], since_ns: int) -> list[dict[str, Any]]:
    """Entries read at or after since_ns, in first-access order, each with `at_ns`.

    All atimes are taken first: mincore's mmap moves them.
    """
    touched = []
    for path, st in _walk(rootfs):
        if st.st_atime_ns >= since_ns and (st.st_dev, st.st_ino) not in skip:
            touched.append((st.st_atime_ns, path, st))
    touched.sort(key=lambda item: (item[0], str(item[1])))
    entries: list[dict[str, Any]] = []
    for atime, path, st in touched:
        rel = "/" + path.relative_to(rootfs).as_posix() if path != rootfs else "/"
        at = {"at_ns": atime}
        if stat.S_ISREG(st.st_mode):
            ranges = resident_ranges(path, st.st_size)
            entries.append({"path": rel, "kind": "file", "size": st.st_size,
                            "ranges": [list(r) for r in ranges], **at})  # fmt: skip
        elif stat.S_ISLNK(st.st_mode):
            entries.append({"path": rel, "kind": "symlink", "target": os.readlink(path), **at})
        elif stat.S_ISDIR(st.st_mode):
            entries.append({"path": rel, "kind": "dir", "entries": len(os.listdir(path)), **at})
    return entries


def inodes(directory: Path) -> set[tuple[int, int]]:
    """(device, inode) of the files in directory: a hard link elsewhere is the same file."""
    found = set()
    for path in directory.iterdir():
        st = path.stat()
        found.add((st.st_dev, st.st_ino))
    return found


def totals(entries: list[dict[str, Any]]) -> dict[str, int]:
    """Counts and bytes of a boot set."""
    files = [e for e in entries if e["kind"] == "file"]
    return {
        "files": len(files),
        "symlinks": sum(e["kind"] == "symlink" for e in entries),
        "dirs": sum(e["kind"] == "dir" for e in entries),
        "file_bytes": sum(e["size"] for e in files),
        "range_bytes": sum(length for e in files for _o, length in e["ranges"]),
        "reads": sum(len(e["ranges"]) for e in files),
    }


def other_readers(rootfs: Path, stop: threading.Event, found: dict[int, str]) -> None:
    """Until stop: processes other than ganesha.nfsd holding a file under rootfs open.

    A poll (five times a second) can miss a short read; it names who else
    reads the tree, whose reads would otherwise count as the boot's.
    """
    prefix = os.fspath(rootfs) + "/"
    while not stop.wait(0.2):
        for fd_dir in Path("/proc").glob("[0-9]*/fd"):
            pid = int(fd_dir.parent.name)
            if pid in found:
                continue
            try:
                cmdline = (fd_dir.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if "ganesha.nfsd" in cmdline:
                    continue
                if any(os.readlink(fd).startswith(prefix) for fd in fd_dir.iterdir()):
                    found[pid] = cmdline[:300]
            except OSError:
                continue
