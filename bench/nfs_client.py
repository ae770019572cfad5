"""A minimal NFSv4 client for the benchmarks: libnfs's synchronous API through ctypes.

One Client is one simulated node: its own libnfs context, TCP connection and
NFSv4 client id, mounted once, then opening and reading files the way a
booting node does. The library's sync calls run their own poll loop without
the GIL, so one thread per client gives real concurrency. Uses the shared
library libnfs-utils already pulls in (libnfs13); no headers, no build.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from types import TracebackType

READ_CHUNK = 1 << 20  # one READ carries at most this much, like a Linux client's rsize

_lib: ctypes.CDLL | None = None


class NfsError(Exception):
    """A libnfs call failed; carries the call and libnfs's message."""

    def __init__(self, call: str, message: str) -> None:
        super().__init__(f"{call}: {message}")
        self.call = call
        self.message = message


class _Url(ctypes.Structure):
    _fields_ = (("server", ctypes.c_char_p), ("path", ctypes.c_char_p), ("file", ctypes.c_char_p))


def _library() -> ctypes.CDLL:
    global _lib  # noqa: PLW0603 - loaded once, on first use
    if _lib is None:
        lib = ctypes.CDLL(ctypes.util.find_library("nfs") or "libnfs.so.13")
        ptr, text = ctypes.c_void_p, ctypes.c_char_p
        signatures: dict[str, tuple[object, list[object]]] = {
            "nfs_init_context": (ptr, []),
            "nfs_destroy_context": (None, [ptr]),
            "nfs_get_error": (text, [ptr]),
            "nfs_parse_url_dir": (ctypes.POINTER(_Url), [ptr, text]),
            "nfs_destroy_url": (None, [ctypes.POINTER(_Url)]),
            "nfs4_set_client_name": (None, [ptr, text]),
            "nfs_mount": (ctypes.c_int, [ptr, text, text]),
            "nfs_open": (ctypes.c_int, [ptr, text, ctypes.c_int, ctypes.POINTER(ptr)]),
            "nfs_pread": (ctypes.c_int, [ptr, ptr, ctypes.c_uint64, ctypes.c_uint64, ptr]),
            "nfs_close": (ctypes.c_int, [ptr, ptr]),
            "nfs_readlink": (ctypes.c_int, [ptr, text, ctypes.c_char_p, ctypes.c_int]),
            "nfs_opendir": (ctypes.c_int, [ptr, text, ctypes.POINTER(ptr)]),
            "nfs_readdir": (ptr, [ptr, ptr]),
            "nfs_closedir": (None, [ptr, ptr]),
        }
        for name, (restype, argtypes) in signatures.items():
            function = getattr(lib, name)
            function.restype = restype
            function.argtypes = argtypes
        _lib = lib
    return _lib


class Client:
    """One NFSv4 mount of `nfs://HOST/EXPORT?version=4&nfsport=PORT`, as node `name`."""

    def __init__(self, url: str, name: str) -> None:
        self._lib = _library()
        self._ctx: int | None = self._lib.nfs_init_context()
        if not self._ctx:
            raise NfsError("nfs_init_context", "out of memory")
        self._buf = ctypes.create_string_buffer(READ_CHUNK)
        try:
            self._mount(url, name)
        except BaseException:
            self.close()
            raise

    def _mount(self, url: str, name: str) -> None:
        # A real node has its own client id; a shared one would make
        # Ganesha expire each client's state when the next one connects.
        self._lib.nfs4_set_client_name(self._ctx, name.encode())
        parsed = self._lib.nfs_parse_url_dir(self._ctx, url.encode())
        if not parsed:
            raise NfsError("nfs_parse_url_dir", self._error())
        try:
            rc = self._lib.nfs_mount(self._ctx, parsed.contents.server, parsed.contents.path)
        finally:
            self._lib.nfs_destroy_url(parsed)
        self._check("nfs_mount", rc)

    def _error(self) -> str:
        message: bytes | None = self._lib.nfs_get_error(self._ctx)
        return message.decode(errors="replace") if message else "unknown error"

    def _check(self, call: str, rc: int) -> int:
        if rc < 0:
            raise NfsError(call, f"{os.strerror(-rc)} ({self._error()})")
        return rc

    def read(self, path: str, ranges: list[tuple[int, int]]) -> int:
        """Open path, read each (offset, length) range in READ_CHUNK pieces; bytes read."""
        handle = ctypes.c_void_p()
        self._check(f"nfs_open {path}", self._lib.nfs_open(self._ctx, path.encode(), os.O_RDONLY,
                                                           ctypes.byref(handle)))  # fmt: skip
        total = 0
        try:
            for offset, length in ranges:
                done = 0
                while done < length:
                    want = min(READ_CHUNK, length - done)
                    got = self._check(f"nfs_pread {path}", self._lib.nfs_pread(
                        self._ctx, handle, offset + done, want, self._buf))  # fmt: skip
                    if got == 0:  # end of file: the file is shorter than recorded
                        break
                    done += got
                total += done
        finally:
            self._lib.nfs_close(self._ctx, handle)
        return total

    def readlink(self, path: str) -> str:
        """A symlink's target."""
        rc = self._lib.nfs_readlink(self._ctx, path.encode(), self._buf, READ_CHUNK)
        self._check(f"nfs_readlink {path}", rc)
        return self._buf.value.decode(errors="replace")

    def listdir(self, path: str) -> int:
        """Read a directory to its end (what a listing costs); number of entries."""
        handle = ctypes.c_void_p()
        rc = self._lib.nfs_opendir(self._ctx, path.encode(), ctypes.byref(handle))
        self._check(f"nfs_opendir {path}", rc)
        count = 0
        try:
            while self._lib.nfs_readdir(self._ctx, handle):
                count += 1
        finally:
            self._lib.nfs_closedir(self._ctx, handle)
        return count

    def close(self) -> None:
        """Drop the connection and the context (NFSv4 has no unmount call to make)."""
        if self._ctx:
            self._lib.nfs_destroy_context(self._ctx)
            self._ctx = None

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
