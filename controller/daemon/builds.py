"""What the state database records of builds and of the store: builds, versions seen,
published labels and how much of each label's history was announced."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from controller.events.payloads import VersionSummary

BuildState = Literal["queued", "running", "succeeded", "failed", "interrupted"]
MAX_PATHS = 100  # what BuildStarted carries

_BUILD_COLUMNS = (
    "build_id, label, kind, reason, paths, state, version, step, error, "
    "queued_at, started_at, finished_at"
)


@dataclass(frozen=True, slots=True)
class BuildRow:
    """A build as the daemon recorded it."""

    build_id: str
    label: str
    kind: Literal["full", "overlay"]
    reason: str
    paths: tuple[str, ...]
    state: BuildState
    version: str | None
    step: str | None
    error: str | None
    queued_at: float
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class LabelRow:
    """What the daemon last published as a label's active version."""

    label: str
    active: str | None
    previous: str | None
    activated_at: float | None


def _paths_json(paths: Iterable[str]) -> str:
    unique = list(dict.fromkeys(paths))
    return json.dumps(unique[-MAX_PATHS:])


def _build_row(row: Sequence[Any]) -> BuildRow:
    return BuildRow(
        build_id=row[0],
        label=row[1],
        kind=row[2],
        reason=row[3],
        paths=tuple(json.loads(row[4])),
        state=row[5],
        version=row[6],
        step=row[7],
        error=row[8],
        queued_at=row[9],
        started_at=row[10],
        finished_at=row[11],
    )


class BuildWrites:
    """A transaction's part in the builds, versions, labels and history tables (`db.Tx`)."""

    conn: sqlite3.Connection
    now: float

    def begin_build(
        self, build_id: str, label: str, kind: str, reason: str, paths: Iterable[str] = ()
    ) -> BuildRow:
        """A build starts running: the row the daemon queued under this id, or a new one."""
        updated = self.conn.execute(
            "UPDATE builds SET state = 'running', started_at = ? "
            "WHERE build_id = ? AND state IN ('queued', 'running')",
            (self.now, build_id),
        ).rowcount
        if not updated:
            self.conn.execute(
                "INSERT INTO builds (build_id, label, kind, reason, paths, state, queued_at, "
                "started_at) VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
                (build_id, label, kind, reason, _paths_json(paths), self.now, self.now),
            )
        row = self.conn.execute(
            f"SELECT {_BUILD_COLUMNS} FROM builds WHERE build_id = ?",  # noqa: S608
            (build_id,),
        ).fetchone()
        return _build_row(row)

    def set_announced(self, label: str, entries: int) -> None:
        """The first `entries` lines of the label's history have been announced."""
        self.conn.execute(
            "INSERT INTO history_announced (label, entries) VALUES (?, ?) "
            "ON CONFLICT (label) DO UPDATE SET entries = excluded.entries",
            (label, entries),
        )

    def queue_build(
        self, build_id: str, label: str, kind: str, reason: str, paths: Iterable[str]
    ) -> str:
        """Queue a build of the label, merged into the queued one if there is one; its id."""
        row = self.conn.execute(
            "SELECT build_id, kind, paths FROM builds WHERE label = ? AND state = 'queued'",
            (label,),
        ).fetchone()
        if row is None:
            self.conn.execute(
                "INSERT INTO builds (build_id, label, kind, reason, paths, state, queued_at) "
                "VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                (build_id, label, kind, reason, _paths_json(paths), self.now),
            )
            return build_id
        merged_kind = "full" if "full" in (kind, row[1]) else "overlay"
        merged_paths = [*json.loads(row[2]), *paths]
        self.conn.execute(
            "UPDATE builds SET kind = ?, reason = ?, paths = ? WHERE build_id = ?",
            (merged_kind, reason, _paths_json(merged_paths), row[0]),
        )
        return str(row[0])

    def start_build(self, build_id: str) -> None:
        """A queued build begins."""
        self.conn.execute(
            "UPDATE builds SET state = 'running', started_at = ? WHERE build_id = ?",
            (self.now, build_id),
        )

    def finish_build(
        self,
        build_id: str,
        state: BuildState,
        *,
        version: str | None = None,
        step: str | None = None,
        error: str | None = None,
    ) -> None:
        """A build ended (or will never run)."""
        self.conn.execute(
            "UPDATE builds SET state = ?, version = ?, step = ?, error = ?, finished_at = ? "
            "WHERE build_id = ?",
            (state, version, step, error, self.now, build_id),
        )

    def record_version(self, label: str, summary: VersionSummary) -> None:
        """A committed version was seen in the store."""
        self.conn.execute(
            "INSERT INTO versions (label, version, summary, seen_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (label, version) DO UPDATE SET summary = excluded.summary, gone_at = NULL",
            (label, summary.version, summary.model_dump_json(), self.now),
        )

    def set_live_edits(self, label: str, version: str, count: int) -> None:
        """How many `netroot shell --live` edits of the version have been announced."""
        self.conn.execute(
            "UPDATE versions SET live_edits = ? WHERE label = ? AND version = ?",
            (count, label, version),
        )

    def mark_gone(self, label: str, versions: Iterable[str]) -> None:
        """Versions no longer in the store (pruned)."""
        self.conn.executemany(
            "UPDATE versions SET gone_at = ? WHERE label = ? AND version = ?",
            [(self.now, label, v) for v in versions],
        )

    def set_label(
        self,
        label: str,
        active: str | None,
        previous: str | None,
        *,
        activated_at: float | None = None,
    ) -> None:
        """The label's active version as published (activated_at: when, default now)."""
        self.conn.execute(
            "INSERT INTO labels (label, active, previous, activated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (label) DO UPDATE SET active = excluded.active, "
            "previous = excluded.previous, activated_at = CASE WHEN labels.active IS "
            "excluded.active THEN labels.activated_at ELSE excluded.activated_at END",
            (label, active, previous, self.now if activated_at is None else activated_at),
        )


class BuildReads:
    """The database's reading of those tables (`db.Database` holds the connection)."""

    _conn: sqlite3.Connection

    def builds(
        self, *, label: str | None = None, states: Iterable[BuildState] = (), limit: int = 1000
    ) -> list[BuildRow]:
        """Builds, oldest first, filtered by label and state."""
        where, args = [], []
        if label is not None:
            where.append("label = ?")
            args.append(label)
        wanted = list(states)
        if wanted:
            where.append(f"state IN ({', '.join('?' * len(wanted))})")
            args.extend(wanted)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._conn.execute(
            f"SELECT {_BUILD_COLUMNS} FROM builds {clause} "  # noqa: S608 (fixed fragments)
            "ORDER BY queued_at DESC, rowid DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [_build_row(r) for r in reversed(rows)]

    def build(self, build_id: str) -> BuildRow | None:
        """One build by id."""
        row = self._conn.execute(
            f"SELECT {_BUILD_COLUMNS} FROM builds WHERE build_id = ?",  # noqa: S608
            (build_id,),
        ).fetchone()
        return None if row is None else _build_row(row)

    def announced(self, label: str) -> int | None:
        """How many history lines of the label were announced (None: never looked at)."""
        row = self._conn.execute(
            "SELECT entries FROM history_announced WHERE label = ?", (label,)
        ).fetchone()
        return None if row is None else int(row[0])

    def labels(self) -> dict[str, LabelRow]:
        """Published active versions, by label."""
        rows = self._conn.execute("SELECT label, active, previous, activated_at FROM labels")
        return {r[0]: LabelRow(*r) for r in rows.fetchall()}

    def versions(self, label: str, *, gone: bool = False) -> dict[str, VersionSummary]:
        """Versions seen in the store (or, with gone, those pruned since), oldest first."""
        rows = self._conn.execute(
            "SELECT summary FROM versions WHERE label = ? AND (gone_at IS NOT NULL) = ? "
            "ORDER BY version",
            (label, int(gone)),
        ).fetchall()
        summaries = [VersionSummary.model_validate_json(r[0]) for r in rows]
        return {s.version: s for s in summaries}

    def live_edits(self, label: str) -> dict[str, int]:
        """Announced in-place edits per version of the label."""
        rows = self._conn.execute(
            "SELECT version, live_edits FROM versions WHERE label = ? AND gone_at IS NULL",
            (label,),
        )
        return dict(rows.fetchall())
