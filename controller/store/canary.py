"""Canary pins: the nodes whose per-MAC menus boot a version other than the label's active one.

A rollout (controller.events.canary, run by controller.daemon.rollouts) pins
its canaries here; every render of the TFTP root (controller.serve.tftp)
reads the pins, so whichever process renders next (an activation of another
label, a gc, recovery) keeps the canaries' menus. One small JSON file per
label, replaced atomically under the label's lock; no file: no pins.
"""

from __future__ import annotations

from pydantic import Field, ValidationError

from controller.core.errors import StoreError
from controller.core.ids import Mac, VersionId
from controller.core.model import Model, first_error
from controller.store import fsops
from controller.store.layout import LabelPaths

PINS_NAME = "canaries.json"


class Pins(Model):
    """The label's canaries and the version their menus boot."""

    version: VersionId
    macs: tuple[Mac, ...] = Field(min_length=1, max_length=1000)
    rollout_id: str = Field(min_length=1, max_length=128)


def pins_path(paths: LabelPaths) -> str:
    """<state_dir>/images/<label>/canaries.json."""
    return str(paths.images / PINS_NAME)


def read_pins(paths: LabelPaths) -> Pins | None:
    """The label's pins, or None; StoreError naming the file when it is unreadable."""
    path = paths.images / PINS_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return Pins.model_validate_json(data)
    except ValidationError as exc:
        err = first_error(exc)
        raise StoreError(f"{path}: {err.field or 'pins'}: {err.problem}") from None


def write_pins(paths: LabelPaths, pins: Pins) -> None:
    """Pin the canaries (caller holds the label lock, then renders the TFTP root)."""
    fsops.write_atomic(paths.images / PINS_NAME, pins.model_dump_json().encode() + b"\n", 0o644)


def clear_pins(paths: LabelPaths) -> bool:
    """Unpin every canary of the label; True if there were pins (caller re-renders)."""
    path = paths.images / PINS_NAME
    existed = path.exists()
    path.unlink(missing_ok=True)
    if existed:
        fsops.fsync_dir(paths.images)
    return existed
