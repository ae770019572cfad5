"""The record of in-place edits of a version (`netroot shell --live`).

A version is immutable by contract, and its manifest with it; the one
exception, editing the served tree in place as the original tool allowed, is
recorded beside the manifest: one JSON line per edit in
`images/<label>/<version>/live-edits`, appended durably. Its line count is the
version's `live_edits`; node tracking reads it to flag nodes that must
remount. It goes away with the version.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from controller.core.model import Model
from controller.store import fsops
from controller.store.layout import LabelPaths

LOG_NAME = "live-edits"
MAX_PATHS = 200  # a record names at most this many changed paths


class LiveEdit(Model):
    """One in-place edit of a served version."""

    time: datetime
    changed: int
    paths: tuple[str, ...]
    command: str | None = None


def log_path(paths: LabelPaths, version: str) -> Path:
    """Where a version's live edits are recorded."""
    return paths.version(version) / LOG_NAME


def record(paths: LabelPaths, version: str, edit: LiveEdit) -> int:
    """Append an edit durably; returns the version's live_edits count after it."""
    edit = edit.model_copy(update={"paths": edit.paths[:MAX_PATHS]})
    fsops.append_durable(log_path(paths, version), edit.model_dump_json() + "\n")
    return len(read(paths, version))


def read(paths: LabelPaths, version: str) -> list[LiveEdit]:
    """Every recorded edit, oldest first (a torn last line is skipped)."""
    try:
        text = log_path(paths, version).read_text()
    except FileNotFoundError:
        return []
    edits = []
    for line in text.splitlines():
        try:
            edits.append(LiveEdit.model_validate_json(line))
        except ValidationError:
            continue
    return edits


def count(paths: LabelPaths, version: str) -> int:
    """The version's live_edits: how often it was changed in place."""
    return len(read(paths, version))
