"""The label lock: one build, activation or gc of a label at a time (core.flock underneath)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from controller.core.flock import file_lock
from controller.store.layout import LabelPaths


def label_lock(
    paths: LabelPaths, on_wait: Callable[[], None] | None = None
) -> contextlib.AbstractContextManager[None]:
    """Hold the label's lock; on_wait is called once if another process holds it."""
    paths.images.mkdir(parents=True, exist_ok=True)
    return file_lock(paths.lock, on_wait, mode=0o644)
