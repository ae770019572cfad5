"""Filesystem primitives with crash-safe semantics: replace by rename, fsync, clone."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
import uuid
from pathlib import Path

from controller.core import failpoints, proc
from controller.store.layout import tmp_name

_libc = ctypes.CDLL(None, use_errno=True)


def fsync_dir(path: Path) -> None:
    """Make a rename or link creation inside path durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: Path) -> None:
    """Flush the whole filesystem holding path (one call instead of an fsync per file)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def swap_symlink(link: Path, target: Path | str, *, durable: bool = True) -> None:
    """Point link at target atomically: a new link beside it, then rename over it.

    durable=False skips the directory fsync, for links that start-up recovery
    re-derives from a durable record anyway (activation's export/TFTP links).
    """
    tmp = stage_symlink(link, target)
    os.replace(tmp, link)
    if durable:
        fsync_dir(link.parent)


def _named(exc: OSError, path: Path) -> OSError:
    """The same error naming path: an ENOSPC from write(2) otherwise names no file."""
    if exc.filename is not None:
        return exc
    return type(exc)(exc.errno, exc.strerror, os.fspath(path))


def stage_file(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> Path:
    """Write data to a new temporary sibling of path (swept at start-up); returns it.

    Renaming it over path is the caller's commit; on any error nothing is left.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path, uuid.uuid4().hex[:12])
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view[: 1 << 16])
            view = view[written:]
            failpoints.hit("write_atomic:chunk")
        os.fchmod(fd, mode)
        if durable:
            os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise _named(exc, path) from None
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def stage_symlink(link: Path, target: Path | str) -> Path:
    """A new temporary symlink beside link (swept at start-up); returns it."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(link, uuid.uuid4().hex[:12])
    try:
        os.symlink(target, tmp)
    except OSError as exc:
        raise _named(exc, link) from None
    failpoints.hit("swap_symlink:created")
    return tmp


def holds(path: Path, data: bytes) -> bool:
    """True if path is a file holding exactly data (a missing or unreadable one does not)."""
    try:
        return path.read_bytes() == data
    except OSError:
        return False


def stage_file_if_changed(
    path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True
) -> Path | None:
    """stage_file, or None when path already holds data (nothing to rename over it)."""
    return None if holds(path, data) else stage_file(path, data, mode, durable=durable)


def stage_symlink_if_changed(link: Path, target: Path | str) -> Path | None:
    """stage_symlink, or None when link already points at target."""
    try:
        if os.readlink(link) == os.fspath(target):
            return None
    except OSError:
        pass
    return stage_symlink(link, target)


def write_if_changed(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> bool:
    """write_atomic unless path already holds data; True if it wrote."""
    if holds(path, data):
        return False
    write_atomic(path, data, mode, durable=durable)
    return True


def write_atomic(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace path with data: write a temporary sibling, fsync, rename, fsync the dir.

    durable=False skips both fsyncs, for files that start-up recovery renders
    again (boot menus): readers still only ever see a whole file.
    """
    tmp = stage_file(path, data, mode, durable=durable)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def _append(fd: int, data: bytes, path: Path) -> None:
    end = os.lseek(fd, 0, os.SEEK_END)
    if os.write(fd, data) != len(data):
        # A full disk took part of the line: it must not count as written.
        os.ftruncate(fd, end)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
    try:
        os.fsync(fd)
    except OSError:
        os.ftruncate(fd, end)  # not durable, so not committed: take it back
        raise


def append_durable(path: Path, line: str) -> None:
    """Append one line and fsync; a torn tail from an earlier crash is cut off first.

    On any error the file is as before: the line is not committed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            os.lseek(fd, max(0, size - 4096), os.SEEK_SET)
            tail = os.read(fd, 4096)
            if not tail.endswith(b"\n"):
                os.ftruncate(fd, size - (len(tail) - (tail.rfind(b"\n") + 1)))
        _append(fd, line.encode(), path)
    except OSError as exc:
        raise _named(exc, path) from None
    finally:
        os.close(fd)


def private_dir(path: Path) -> Path:
    """A directory only root can enter (0700), made or tightened.

    Image trees keep their setuid binaries; under it no local user can run one.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)
    return path


def remove_tree(path: Path) -> None:
    """Delete a tree; missing is fine. Never follows symlinks out of it."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)


def reflinks_supported(directory: Path) -> bool:
    """Whether cp can reflink inside directory's filesystem (btrfs, XFS with reflink)."""
    probe = directory / f".reflink-probe-{uuid.uuid4().hex[:8]}"
    copy = probe.with_name(probe.name + ".copy")
    try:
        probe.write_bytes(b"x")
        result = proc.run(["cp", "--reflink=always", probe, copy], check=False)
        return result.returncode == 0
    finally:
        probe.unlink(missing_ok=True)
        copy.unlink(missing_ok=True)


def clone_tree_argv(src: Path, dst: Path, *, reflink: bool) -> list[str]:
    """cp argv cloning src to dst: reflinks where available, hard links otherwise.

    Hard links are safe because netroot never writes a file of a version in
    place: overlays and edits always replace (new inode, then rename).
    """
    mode = "--reflink=always" if reflink else "--link"
    return ["cp", "-a", "--no-target-directory", mode, os.fspath(src), os.fspath(dst)]


def clone_tree(src: Path, dst: Path) -> None:
    """Clone a directory tree cheaply onto the same filesystem."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    proc.run(clone_tree_argv(src, dst, reflink=reflinks_supported(dst.parent)))


def link_or_copy(src: Path, dst: Path, *, copy_mode: int | None = None) -> None:
    """Hard-link src to dst, copying when they are on different filesystems.

    copy_mode, when given, is the mode of a copy (a link shares src's inode).
    """
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copy2(src, dst)
        if copy_mode is not None:
            dst.chmod(copy_mode)
