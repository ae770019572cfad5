"""The one file lock: an exclusive (or shared) flock(2) held for a block.

flock(2) is released by the kernel when the holder dies, even by SIGKILL,
so a crashed process never leaves a lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(
    lock: Path,
    on_wait: Callable[[], None] | None = None,
    mode: int = 0o600,
    *,
    shared: bool = False,
) -> Iterator[None]:
    """Hold an flock on the file lock (made if missing, with its directory), exclusive
    unless shared; on_wait is called once if another process holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    kind = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, kind)
        yield
    finally:
        os.close(fd)
