"""Which replica boot servers hold which versions of a label (docs/design.md §17).

The primary's daemon records each replica's acknowledgement (image.replicated)
here, in one small JSON file per label replaced atomically, so that every
activation, whoever runs it (the daemon, `netroot activate` by hand, a canary
promotion), can check `replicas_required` where it composes the switch.
Only the daemon writes it; acknowledgements of versions gone from the store
are dropped on each write.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import AwareDatetime, Field, ValidationError

from controller.core.errors import StoreError
from controller.core.ids import ServerName, VersionId
from controller.core.model import Model, first_error
from controller.store import fsops
from controller.store import versions as store
from controller.store.layout import LabelPaths

HOLDERS_NAME = "replicas.json"


class Holders(Model):
    """Per version, the replicas that acknowledged holding it, and when."""

    acks: dict[VersionId, dict[ServerName, AwareDatetime]] = Field(default_factory=dict)


def read_holders(paths: LabelPaths) -> Holders:
    """The label's acknowledgements (none when the file does not exist)."""
    path = paths.images / HOLDERS_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Holders()
    try:
        return Holders.model_validate_json(data)
    except ValidationError as exc:
        err = first_error(exc)
        raise StoreError(f"{path}: {err.field or 'acks'}: {err.problem}") from None


def record(paths: LabelPaths, version: str, replica: str, at: datetime) -> Holders:
    """Add one acknowledgement (the daemon's, one writer); returns what the file now holds."""
    current = read_holders(paths)
    present = set(store.version_ids(paths))
    acks = {v: dict(r) for v, r in current.acks.items() if v in present}
    acks.setdefault(version, {})[replica] = at
    holders = Holders(acks=acks)
    paths.images.mkdir(parents=True, exist_ok=True)
    fsops.write_atomic(paths.images / HOLDERS_NAME, holders.model_dump_json(indent=2).encode())
    return holders


def held_by(paths: LabelPaths, version: str) -> list[str]:
    """The replicas holding version, by name."""
    return sorted(read_holders(paths).acks.get(version, {}))


def check_required(paths: LabelPaths, version: str, required: int) -> None:
    """StoreError unless at least `required` replicas acknowledged version."""
    if required <= 0:
        return
    holders = held_by(paths, version)
    if len(holders) >= required:
        return
    named = ", ".join(holders) if holders else "none"
    raise StoreError(
        f"{paths.label}: {version} is held by {len(holders)} of the {required} replicas "
        f"replicas_required asks for (acknowledged: {named}); a replica acknowledges once it "
        "has fetched and verified the version (`netroot status` lists replicas)"
    )
