"""The daemon's SQLite state (WAL): builds, versions seen, nodes and the event outbox.

Every event is inserted into the outbox in the same transaction as the state
change it reports, and deleted only once the broker acknowledged it, so a
crash or a broker outage delays events and loses none. Only the daemon
writes; CLI commands (`status`, `nodes`, `gc`) open the file read-only, which
WAL allows while the daemon runs.

The outbox is bounded (`mqtt.outbox_limit`): past the limit, a retained
message that a newer retained message for the same topic supersedes goes
first, then the oldest non-retained events, with the count logged and kept
in `outbox_dropped`. The latest retained state of a topic is never dropped,
and the tables holding state are never touched by the bound.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from controller.config.models import Config
from controller.core.errors import NetrootError
from controller.core.log import get_logger
from controller.events.liveness import in_use
from controller.events.node_events import NodeState
from controller.events.payloads import VersionSummary

log = get_logger("db")

DB_NAME = "netroot.db"
SCHEMA_VERSION = 1
BuildState = Literal["queued", "running", "succeeded", "failed", "interrupted"]
MAX_PATHS = 100  # what BuildStarted carries

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS builds (
    build_id TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('full', 'overlay')),
    reason TEXT NOT NULL,
    paths TEXT NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'interrupted')),
    version TEXT,
    step TEXT,
    error TEXT,
    queued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS builds_by_label ON builds (label, queued_at);
CREATE TABLE IF NOT EXISTS versions (
    label TEXT NOT NULL,
    version TEXT NOT NULL,
    summary TEXT NOT NULL,
    live_edits INTEGER NOT NULL DEFAULT 0,
    seen_at REAL NOT NULL,
    gone_at REAL,
    PRIMARY KEY (label, version)
);
CREATE TABLE IF NOT EXISTS labels (
    label TEXT PRIMARY KEY,
    active TEXT,
    previous TEXT,
    activated_at REAL
);
CREATE TABLE IF NOT EXISTS nodes (
    mac TEXT PRIMARY KEY,
    label TEXT,
    state TEXT NOT NULL,
    data TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS nodes_by_label ON nodes (label, state);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_topic ON outbox (retain, topic, seq);
CREATE TABLE IF NOT EXISTS history_announced (
    label TEXT PRIMARY KEY,
    entries INTEGER NOT NULL
);
"""


class DatabaseError(NetrootError):
    """The state database cannot be opened or has an unknown schema."""


def db_path(config: Config) -> Path:
    """<state_dir>/netroot.db."""
    return config.state_dir / DB_NAME


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One message waiting for the broker's acknowledgement."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


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


@dataclass
class Tx:
    """Writes of one transaction; the outbox rows commit with the state they describe."""

    conn: sqlite3.Connection
    now: float = field(default_factory=time.time)
    added: int = 0
    _after: list[Callable[[], None]] = field(default_factory=list)
    _undo: list[Callable[[], None]] = field(default_factory=list)
    # Buffered and written with executemany at commit: a batch of node
    # reports makes thousands of these rows.
    _messages: list[tuple[str, bytes, int, int, float]] = field(default_factory=list)
    _nodes: dict[str, tuple[str, str | None, str, str, float]] = field(default_factory=dict)

    def emit(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Queue a message for the broker (in the order of the calls)."""
        self._messages.append((topic, payload, qos, int(retain), self.now))
        self.added += 1

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run callback once the transaction committed (in-memory caches follow the db)."""
        self._after.append(callback)

    def on_rollback(self, callback: Callable[[], None]) -> None:
        """Run callback if the transaction is rolled back (undo an in-memory change)."""
        self._undo.append(callback)

    def put_node(self, state: NodeState) -> None:
        """Insert or replace a node's state."""
        self._nodes[state.mac] = (
            state.mac,
            state.label,
            state.state,
            state.model_dump_json(),
            time.time(),
        )

    def delete_node(self, mac: str) -> None:
        """Forget a node (its buffered state included)."""
        self._nodes.pop(mac, None)
        self.conn.execute("DELETE FROM nodes WHERE mac = ?", (mac,))

    def flush(self) -> None:
        """Write the buffered messages and node states (before commit)."""
        if self._messages:
            self.conn.executemany(
                "INSERT INTO outbox (topic, payload, qos, retain, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                self._messages,
            )
            self._messages.clear()
        if self._nodes:
            self.conn.executemany(
                "INSERT INTO nodes (mac, label, state, data, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (mac) DO UPDATE SET label = excluded.label, state = excluded.state, "
                "data = excluded.data, updated_at = excluded.updated_at",
                self._nodes.values(),
            )
            self._nodes.clear()

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


_BUILD_COLUMNS = (
    "build_id, label, kind, reason, paths, state, version, step, error, "
    "queued_at, started_at, finished_at"
)


def _connect(path: Path, *, readonly: bool, immutable: bool = False) -> sqlite3.Connection:
    try:
        if readonly:
            query = "mode=ro&immutable=1" if immutable else "mode=ro"
            conn = sqlite3.connect(f"file:{path}?{query}", uri=True, isolation_level=None)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Root only: SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
            conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 10000")
    except sqlite3.Error as exc:
        raise DatabaseError(f"{path}: cannot open the state database: {exc}") from None
    return conn


class Database:
    """The state database; `transaction()` is the only way to change it."""

    def __init__(
        self,
        path: Path,
        *,
        outbox_limit: int = 100_000,
        readonly: bool = False,
        immutable: bool = False,
        on_outbox: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.outbox_limit = outbox_limit
        self.on_outbox = on_outbox
        self._conn = _connect(path, readonly=readonly, immutable=immutable)
        self._in_tx = False
        try:
            if not readonly:
                self._setup()
            self._outbox_count = self._count_outbox()
        except sqlite3.Error as exc:
            # A corrupt file (or a full disk): one line naming it, no traceback.
            self._conn.close()
            raise DatabaseError(f"{path}: cannot open the state database: {exc}") from None

    def _setup(self) -> None:
        # WAL: readers (the CLI) never block the daemon. synchronous=NORMAL: a
        # killed process loses nothing committed; a power cut may lose the last
        # transactions, never consistency, and start-up reconciliation with
        # the store (whose history is fsynced) re-announces what they held.
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.executescript(_SCHEMA)
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            self._conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise DatabaseError(
                f"{self.path}: schema version {row[0]}, this netroot knows {SCHEMA_VERSION}"
            )

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One atomic change: state and the events that report it commit together."""
        if self._in_tx:
            raise RuntimeError("transactions do not nest")
        self._in_tx = True
        self._conn.execute("BEGIN IMMEDIATE")
        tx = Tx(self._conn)
        try:
            yield tx
            tx.flush()
            dropped = self._bound_outbox(tx.added) if tx.added else 0
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            for undo in reversed(tx._undo):
                undo()
            raise
        finally:
            self._in_tx = False
        self._outbox_count += tx.added - dropped
        for callback in tx._after:
            callback()
        if tx.added and self.on_outbox is not None:
            self.on_outbox()

    # --- the outbox -----------------------------------------------------------

    def _count_outbox(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def _bound_outbox(self, added: int) -> int:
        excess = self._outbox_count + added - self.outbox_limit
        if excess <= 0:
            return 0
        superseded = self._conn.execute(
            "DELETE FROM outbox WHERE retain = 1 AND seq < ("
            " SELECT MAX(o.seq) FROM outbox AS o WHERE o.retain = 1 AND o.topic = outbox.topic)"
        ).rowcount
        oldest = 0
        if excess > superseded:
            oldest = self._conn.execute(
                "DELETE FROM outbox WHERE seq IN ("
                " SELECT seq FROM outbox WHERE retain = 0 ORDER BY seq LIMIT ?)",
                (excess - superseded,),
            ).rowcount
        dropped = superseded + oldest
        self._conn.execute(
            "INSERT INTO meta VALUES ('outbox_dropped', ?) ON CONFLICT (key) DO UPDATE "
            "SET value = CAST(value AS INTEGER) + excluded.value",
            (dropped,),
        )
        log.warning(
            "outbox full: dropped undelivered messages",
            limit=self.outbox_limit,
            superseded_states=superseded,
            oldest_events=oldest,
        )
        return dropped

    def refresh_outbox_count(self) -> int:
        """Count again: other processes (the CLI) add to the outbox too."""
        self._outbox_count = self._count_outbox()
        return self._outbox_count

    def outbox_head(self, limit: int) -> list[OutboxRow]:
        """The oldest messages waiting, in the order they must be published."""
        rows = self._conn.execute(
            "SELECT seq, topic, payload, qos, retain FROM outbox ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        if len(rows) > self._outbox_count or not rows:
            # The CLI added rows this process did not count (or the count is stale).
            self._outbox_count = len(rows) if len(rows) < limit else self._count_outbox()
        return [OutboxRow(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows]

    def outbox_delete(self, seqs: Sequence[int]) -> None:
        """Forget messages the broker acknowledged."""
        if not seqs:
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            deleted = self._conn.executemany(
                "DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs]
            ).rowcount
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._outbox_count = max(0, self._outbox_count - deleted)

    @property
    def outbox_pending(self) -> int:
        """Messages not yet acknowledged by the broker."""
        return self._outbox_count

    def outbox_dropped(self) -> int:
        """Messages the bound has dropped since the database was created."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'outbox_dropped'").fetchone()
        return int(row[0]) if row else 0

    # --- reading state --------------------------------------------------------

    def nodes(self, *, label: str | None = None) -> list[NodeState]:
        """Every known node (of one label), by MAC."""
        if label is None:
            rows = self._conn.execute("SELECT data FROM nodes ORDER BY mac").fetchall()
        else:
            rows = self._conn.execute(
                "SELECT data FROM nodes WHERE label = ? ORDER BY mac", (label,)
            ).fetchall()
        return [NodeState.model_validate_json(r[0]) for r in rows]

    def node_updated_at(self) -> dict[str, float]:
        """When each node's state was last stored (for benchmarks and `status`)."""
        return dict(self._conn.execute("SELECT mac, updated_at FROM nodes").fetchall())

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


class NodeGuard:
    """gc.InUseGuard from the nodes table: versions that a live node runs are never pruned.

    With `activations` (the label's history as (version, time it became
    active)), a node's report counts only for a version it could have booted:
    one that was active by the node's last report. A made-up report naming an
    old or never-active version keeps nothing.
    """

    def __init__(
        self,
        path: Path,
        activations: Callable[[str], Sequence[tuple[str, datetime]]] | None = None,
    ) -> None:
        self.path = path
        self.activations = activations

    def versions_in_use(self, label: str) -> set[str]:
        """Versions of the label run by nodes that are not lost (and could have booted them)."""
        history = self.activations(label) if self.activations is not None else None
        try:
            db = Database(self.path, readonly=True)
        except DatabaseError:
            wal = Path(f"{self.path}-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise
            # An empty or no WAL: the file itself has every commit. Read as
            # immutable, SQLite creates no -shm, which a full disk refuses.
            db = Database(self.path, readonly=True, immutable=True)
        try:
            return in_use(db.nodes(label=label), label, history)
        except sqlite3.Error as exc:
            raise DatabaseError(f"{self.path}: cannot read nodes: {exc}") from None
        finally:
            db.close()
