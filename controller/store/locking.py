"""Exclusive file locks: per label (one build, activation or gc of a label at a
time) and for files several labels rewrite.

flock(2) is released by the kernel when the holder dies, even by SIGKILL,
so a crashed build never leaves the label locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from controller.store.layout import LabelPaths


@contextlib.contextmanager
def file_lock(
    lock: Path, on_wait: Callable[[], None] | None = None, mode: int = 0o600
) -> Iterator[None]:
    """Hold an exclusive flock on the file lock (made if missing, with its directory);
    on_wait is called once if another process holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def label_lock(
    paths: LabelPaths, on_wait: Callable[[], None] | None = None
) -> contextlib.AbstractContextManager[None]:
    """Hold the label's lock; on_wait is called once if another process holds it."""
    paths.images.mkdir(parents=True, exist_ok=True)
    return file_lock(paths.lock, on_wait, mode=0o644)
