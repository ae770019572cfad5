"""Writes into an image tree that can never land outside it.

Every path is resolved with openat2(2) and RESOLVE_IN_ROOT, the kernel's own
chroot-style resolution: an absolute or `..` symlink inside the image (such
as `etc -> /etc`) resolves inside the image, as it would on the booted node,
and never on the host. The last component is never followed: files are
created under a temporary name and renamed over it, so a symlink planted at
the target path is replaced, not written through.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from controller.core import failpoints
from controller.core.errors import UnsafePathError

_SYS_OPENAT2 = 437  # the same number on every Linux architecture
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE_IN_ROOT = 0x10
_CHUNK = 1 << 20
_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


def _openat2(
    dir_fd: int, path: str, flags: int, resolve: int = _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS
) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    while True:
        fd = int(
            _libc.syscall(
                _SYS_OPENAT2, dir_fd, path.encode(), ctypes.byref(how), ctypes.sizeof(how)
            )
        )
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err in (errno.EAGAIN, errno.EINTR):
            continue  # EAGAIN: a concurrent rename raced the lookup; retry as the man page says
        raise OSError(err, os.strerror(err), path)


def open_regular_beneath(root: Path, rel: str) -> int | None:
    """A read descriptor of the regular file root/rel reached through directories only
    (no symlink anywhere on the way, nothing outside root), or None.

    What another server may read of a version is exactly its files as the index
    lists them: a symlink is sent as an index line, never followed.
    """
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        resolve = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
        fd = _openat2(root_fd, rel, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY, resolve)
    except OSError:
        return None
    finally:
        os.close(root_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def split(rel: str) -> list[str]:
    """Components of a path relative to the image root ('.' and empty parts dropped)."""
    return [p for p in rel.split("/") if p not in ("", ".")]


class ImageRoot:
    """An open image tree; all writes go through its directory descriptor."""

    def __init__(self, root: Path, name: str | None = None) -> None:
        self.root = root
        self.name = name or str(root)  # how errors name the tree
        self._fd = -1
        self._real = ""

    def __enter__(self) -> ImageRoot:
        self._fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._real = os.readlink(f"/proc/self/fd/{self._fd}")
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        os.close(self._fd)

    def _relative(self, fd: int) -> str:
        real = os.readlink(f"/proc/self/fd/{fd}")
        if real == self._real:
            return ""
        if not real.startswith(self._real + "/"):  # cannot happen with RESOLVE_IN_ROOT
            raise UnsafePathError(f"{self.name}: resolved outside the image: {real}")
        return real[len(self._real) + 1 :]

    def open_dir(self, parts: list[str], *, create: bool, mode: int = 0o755) -> int:
        """Open the directory at parts inside the image, creating missing ones if asked."""
        fd = os.dup(self._fd)
        for i, name in enumerate(parts):
            try:
                nxt = _openat2(self._fd, "/".join(parts[: i + 1]), os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                if exc.errno == errno.ENOENT and create:
                    try:
                        os.mkdir(name, mode, dir_fd=fd)
                    except FileExistsError:
                        os.close(fd)
                        where = "/".join(parts[: i + 1])
                        raise UnsafePathError(
                            f"{self.name}: /{where}: dangling symlink "
                            "(its target does not exist in the image)"
                        ) from None
                    nxt = _openat2(self._fd, "/".join(parts[: i + 1]), os.O_RDONLY | os.O_DIRECTORY)
                else:
                    os.close(fd)
                    raise self._explain(exc, parts[: i + 1]) from None
            os.close(fd)
            fd = nxt
        return fd

    def _explain(self, exc: OSError, parts: list[str]) -> UnsafePathError:
        where = "/".join(parts)
        reasons = {
            errno.ELOOP: "symlink loop in the image",
            errno.ENOTDIR: "a non-directory stands where a directory is needed",
            errno.ENOENT: "no such directory in the image",
        }
        reason = reasons.get(exc.errno or 0, exc.strerror or str(exc))
        return UnsafePathError(f"{self.name}: /{where}: {reason}")

    def _parent(self, rel: str) -> tuple[int, str, str]:
        parts = split(rel)
        if not parts or parts[-1] == "..":
            raise UnsafePathError(f"{self.name}: {rel!r} is not a file path inside the image")
        fd = self.open_dir(parts[:-1], create=True)
        parent_rel = self._relative(fd)
        return fd, parts[-1], f"{parent_rel}/{parts[-1]}" if parent_rel else parts[-1]

    @staticmethod
    def _clear_dir(fd: int, name: str) -> None:
        """A directory standing where a file goes is removed first (rename cannot replace it)."""
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=fd)

    @contextlib.contextmanager
    def _replacing(self, rel: str) -> Iterator[tuple[int, str, str]]:
        """Yield (parent fd, temporary name, resolved path); on success rename tmp over rel."""
        fd, name, resolved = self._parent(rel)
        tmp = f".{name}.netroot-{uuid.uuid4().hex[:8]}"
        try:
            yield fd, tmp, resolved
            self._clear_dir(fd, name)
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=fd)
            os.close(fd)

    @staticmethod
    def _create(fd: int, tmp: str, mode: int) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(tmp, flags, mode, dir_fd=fd)

    def replace_file(
        self, rel: str, source: Path, *, mode: int, uid: int, gid: int
    ) -> tuple[str, str]:
        """Replace rel with a copy of source (new inode, then rename); returns (path, sha256)."""
        digest = hashlib.sha256()
        with self._replacing(rel) as (fd, tmp, resolved):
            out = self._create(fd, tmp, 0o600)
            try:
                with source.open("rb") as src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        os.write(out, chunk)
                        failpoints.hit("overlay:write")
                os.fchown(out, uid, gid)
                os.fchmod(out, stat.S_IMODE(mode))
            finally:
                os.close(out)
        return resolved, digest.hexdigest()

    def replace_symlink(self, rel: str, target: str, *, uid: int, gid: int) -> str:
        """Replace rel with a symlink to target (stored as is; it resolves on the node)."""
        with self._replacing(rel) as (fd, tmp, resolved):
            os.symlink(target, tmp, dir_fd=fd)
            os.chown(tmp, uid, gid, dir_fd=fd, follow_symlinks=False)
        return resolved

    def write_bytes(self, rel: str, data: bytes, *, mode: int = 0o644) -> tuple[str, str]:
        """Replace rel with data, owned by root; returns (path, sha256)."""
        with self._replacing(rel) as (fd, tmp, resolved):
            out = self._create(fd, tmp, mode)
            try:
                os.write(out, data)
                os.fchmod(out, mode)
            finally:
                os.close(out)
        return resolved, hashlib.sha256(data).hexdigest()

    def ensure_dir(self, rel: str, *, mode: int, uid: int, gid: int) -> tuple[str, bool]:
        """Make rel a directory (following in-image symlinks); returns (path, created)."""
        parts = split(rel)
        try:
            fd = _openat2(self._fd, "/".join(parts), os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                if exc.errno == errno.ENOTDIR:
                    return self._dir_over_file(parts, mode=mode, uid=uid, gid=gid), True
                raise self._explain(exc, parts) from None
        else:
            try:
                return self._relative(fd), False
            finally:
                os.close(fd)
        fd = self.open_dir(parts, create=True, mode=stat.S_IMODE(mode))
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, stat.S_IMODE(mode))
            return self._relative(fd), True
        finally:
            os.close(fd)

    def _dir_over_file(self, parts: list[str], *, mode: int, uid: int, gid: int) -> str:
        """An overlay directory where the image has a file: the directory wins."""
        fd, name, resolved = self._parent("/".join(parts))
        try:
            os.unlink(name, dir_fd=fd)
            os.mkdir(name, stat.S_IMODE(mode), dir_fd=fd)
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
            os.chmod(name, stat.S_IMODE(mode), dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(fd)
        return resolved

    def remove(self, rel: str) -> str | None:
        """Delete rel (a whiteout); returns the resolved path, None if it did not exist."""
        try:
            fd, name, resolved = self._parent_existing(rel)
        except FileNotFoundError:
            return None
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=fd)
            else:
                os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            return None
        finally:
            os.close(fd)
        return resolved

    def _parent_existing(self, rel: str) -> tuple[int, str, str]:
        parts = split(rel)
        if not parts:
            raise UnsafePathError(f"{self.name}: cannot remove the image root")
        try:
            fd = _openat2(self._fd, "/".join(parts[:-1]) or ".", os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                raise FileNotFoundError(rel) from None
            raise self._explain(exc, parts[:-1]) from None
        parent_rel = self._relative(fd)
        return fd, parts[-1], f"{parent_rel}/{parts[-1]}" if parent_rel else parts[-1]

    def listdir(self, rel: str) -> list[str]:
        """Names in the directory rel of the image (symlinks resolved inside the image)."""
        fd = self.open_dir(split(rel), create=False)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def _open_regular(self, rel: str) -> int:
        """A read descriptor of the regular file rel (symlinks resolved inside the image)."""
        parts = split(rel)
        if not parts:
            raise UnsafePathError(f"{self.name}: {rel!r} is not a file path inside the image")
        try:
            # O_NONBLOCK: a FIFO planted at the path must not hang the build.
            fd = _openat2(self._fd, "/".join(parts), os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as exc:
            reasons = {
                errno.ELOOP: "symlink loop in the image",
                errno.ENOTDIR: "a non-directory stands where a directory is needed",
                errno.ENOENT: "no such file in the image",
                errno.EXDEV: "resolves outside the image",
            }
            why = reasons.get(exc.errno or 0, exc.strerror or str(exc))
            raise UnsafePathError(f"{self.name}: /{'/'.join(parts)}: {why}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafePathError(f"{self.name}: /{'/'.join(parts)}: not a regular file")
        return fd

    def resolve_file(self, rel: str) -> str:
        """The path of the regular file rel once its symlinks are resolved inside the image."""
        fd = self._open_regular(rel)
        try:
            return self._relative(fd)
        finally:
            os.close(fd)

    def copy_out(self, rel: str, dest: Path, *, mode: int) -> tuple[int, str]:
        """Copy the regular file rel out of the image to a new file dest; (size, sha256).

        A copy, never a hard link: whatever the image's symlinks say, the bytes come
        from a file inside the image, and dest shares no inode with it.
        """
        digest = hashlib.sha256()
        size = 0
        src = self._open_regular(rel)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            out = os.open(dest, flags, 0o600)
            try:
                while chunk := os.read(src, _CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(out, view) :]
                os.fchmod(out, mode)
            finally:
                os.close(out)
        finally:
            os.close(src)
        return size, digest.hexdigest()

    def lstat(self, resolved: str) -> os.stat_result:
        """lstat of an already resolved path (no symlink in it)."""
        parts = split(resolved)
        fd = _openat2(self._fd, "/".join(parts[:-1]) or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False) if parts else os.fstat(fd)
        finally:
            os.close(fd)
