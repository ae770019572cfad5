"""Per-label exclusive lock: one build, activation or gc of a label at a time.

flock(2) is released by the kernel when the holder dies, even by SIGKILL,
so a crashed build never leaves the label locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator

from controller.layout import LabelPaths


@contextlib.contextmanager
def label_lock(paths: LabelPaths, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the label's lock; on_wait is called once if another process holds it."""
    paths.images.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
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
