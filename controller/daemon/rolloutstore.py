"""Canary rollouts in the state database: requests from the CLI, rollouts the daemon runs.

`netroot activate --canary` checks and chooses its canaries from the node
table, then inserts a request row (like the CLI's events, in the daemon's
database); the daemon's rollout component (controller.daemon.rollouts)
takes it, starts the rollout and keeps it in the rollouts table, the
controller.events.canary model as JSON. `settled` is 0 while what follows
the decision (promote, or revert the canaries) is still to be done: a
restart does it then.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from pydantic import AwareDatetime, Field

from controller.core.ids import Label, Mac, VersionId
from controller.core.model import Model
from controller.events.canary import Rollout
from controller.events.payloads import ActivationReason, RolloutId

if TYPE_CHECKING:  # db.py imports the schema from here
    from controller.daemon.db import Database, Tx

ROLLOUT_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollout_requests (
    id TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    phase TEXT NOT NULL CHECK (phase IN ('running', 'passed', 'failed')),
    settled INTEGER NOT NULL DEFAULT 0,
    data TEXT NOT NULL,
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rollouts_by_label ON rollouts (label, started_at);
CREATE TABLE IF NOT EXISTS rollout_aborts (
    label TEXT PRIMARY KEY,
    rollout_id TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


class CanaryRequest(Model):
    """What `netroot activate --canary` asks the daemon to do."""

    id: RolloutId
    label: Label
    version: VersionId
    macs: tuple[Mac, ...] = Field(min_length=1, max_length=1000)
    reason: ActivationReason
    at: AwareDatetime


def new_rollout_id(now: datetime | None = None) -> str:
    """canary-<UTC time>-<random>: sorts by time, unique."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"canary-{stamp}-{uuid.uuid4().hex[:8]}"


class RolloutBusy(ValueError):
    """The label already has a rollout requested or running."""


class NoRollout(ValueError):
    """The label has no rollout that can still be stopped."""


PendingState = Literal["requested", "running", "finishing"]


class Pending(Model):
    """A label's rollout not over yet: requested, running, or decided and being carried out."""

    id: RolloutId
    label: Label
    version: VersionId
    state: PendingState


def pending(db: Database, label: str) -> Pending | None:
    """The label's requested or unfinished rollout, if any (at most one per label)."""
    rows = db.rows(
        "SELECT data FROM rollout_requests WHERE label = ? ORDER BY created_at, id LIMIT 1",
        (label,),
    )
    if rows:
        request = CanaryRequest.model_validate_json(rows[0][0])
        return Pending(id=request.id, label=label, version=request.version, state="requested")
    rows = db.rows(
        "SELECT data FROM rollouts WHERE label = ? AND (phase = 'running' OR settled = 0) "
        "ORDER BY started_at, id LIMIT 1",
        (label,),
    )
    if not rows:
        return None
    rollout = Rollout.model_validate_json(rows[0][0])
    state: PendingState = "running" if rollout.phase == "running" else "finishing"
    return Pending(id=rollout.id, label=label, version=rollout.version, state=state)


def add_request(db: Database, request: CanaryRequest) -> None:
    """Queue a request for the daemon; RolloutBusy if the label has one going."""
    with db.transaction() as tx:
        other = pending(db, request.label)
        if other is not None:
            raise RolloutBusy(f"label {request.label} already has a canary rollout ({other.id})")
        tx.conn.execute(
            "INSERT INTO rollout_requests (id, label, data, created_at) VALUES (?, ?, ?, ?)",
            (request.id, request.label, request.model_dump_json(), tx.now),
        )


def add_abort(db: Database, label: str) -> Pending:
    """Ask the daemon to stop the label's rollout (`--abort-canary`); NoRollout if none.

    Keyed by label: asking twice is asking once. The rollout's id is kept, so that
    an abort meant for one rollout never stops the next one."""
    with db.transaction() as tx:
        found = pending(db, label)
        if found is None:
            raise NoRollout(f"label {label} has no canary rollout requested or running")
        if found.state == "finishing":
            raise NoRollout(
                f"label {label}: canary rollout {found.id} is decided already and its promotion"
                " or revert is being carried out"
            )
        tx.conn.execute(
            "INSERT OR REPLACE INTO rollout_aborts (label, rollout_id, created_at) "
            "VALUES (?, ?, ?)",
            (label, found.id, tx.now),
        )
    return found


def aborts(db: Database) -> list[tuple[str, str]]:
    """Aborts asked for and not carried out yet: (label, rollout id), oldest first."""
    rows = db.rows("SELECT label, rollout_id FROM rollout_aborts ORDER BY created_at, label")
    return [(str(label), str(rollout_id)) for label, rollout_id in rows]


def take_abort(tx: Tx, label: str) -> None:
    """The abort was carried out (or found nothing left to stop): it goes."""
    tx.conn.execute("DELETE FROM rollout_aborts WHERE label = ?", (label,))


def requests(db: Database) -> list[CanaryRequest]:
    """Requests not taken yet, oldest first."""
    rows = db.rows("SELECT data FROM rollout_requests ORDER BY created_at, id")
    return [CanaryRequest.model_validate_json(data) for (data,) in rows]


def take_request(tx: Tx, request_id: str) -> None:
    """The request was started (or refused): it goes."""
    tx.conn.execute("DELETE FROM rollout_requests WHERE id = ?", (request_id,))


def put(tx: Tx, rollout: Rollout, *, settled: bool = False) -> None:
    """Insert or update a rollout."""
    tx.conn.execute(
        "INSERT INTO rollouts (id, label, phase, settled, data, started_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET phase = excluded.phase, "
        "settled = excluded.settled, data = excluded.data, updated_at = excluded.updated_at",
        (
            rollout.id,
            rollout.label,
            rollout.phase,
            int(settled),
            rollout.model_dump_json(),
            rollout.started_at.timestamp(),
            tx.now,
        ),
    )


def unfinished(db: Database) -> list[tuple[Rollout, bool]]:
    """Rollouts running, or decided and not yet settled, with their settled flag."""
    rows = db.rows(
        "SELECT data, settled FROM rollouts WHERE phase = 'running' OR settled = 0 "
        "ORDER BY started_at, id"
    )
    return [(Rollout.model_validate_json(data), bool(settled)) for data, settled in rows]


def recent(db: Database, label: str | None = None, limit: int = 20) -> list[Rollout]:
    """The newest rollouts (of one label), newest first."""
    where, args = ("WHERE label = ?", (label, limit)) if label else ("", (limit,))
    rows = db.rows(
        f"SELECT data FROM rollouts {where} ORDER BY started_at DESC, id DESC LIMIT ?",  # noqa: S608
        args,
    )
    return [Rollout.model_validate_json(data) for (data,) in rows]


def since(rollout: Rollout, now: datetime) -> float:
    """Seconds the rollout has run."""
    return max(0.0, (now - rollout.started_at).total_seconds())
