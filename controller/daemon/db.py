"""The daemon's SQLite state (WAL): the connection, the schema and transactions.

The tables have their own modules: builds and versions seen (daemon.builds),
nodes (daemon.nodestore), the event outbox (daemon.outbox) and the event
journal (daemon.journal). Every event is inserted into the outbox and the
journal in the same transaction as the state change it reports. Only the
daemon writes; CLI commands (`status`, `nodes`, `events --since`, `gc`) open
the file read-only, which WAL allows while the daemon runs.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Self

from controller.config.models import Config
from controller.core.errors import NetrootError
from controller.daemon.builds import BuildReads, BuildWrites
from controller.daemon.fleetstore import FLEET_SCHEMA
from controller.daemon.journal import JOURNAL_SCHEMA, Journal, JournalRow, JournalWrites
from controller.daemon.lock import holder_pid, lock_path
from controller.daemon.nodestore import NodeReads, NodeRow, NodeWrites
from controller.daemon.outbox import MessageRow, Outbox, OutboxWrites
from controller.daemon.rolloutstore import ROLLOUT_SCHEMA
from controller.events.liveness import in_use

DB_NAME = "netroot.db"
# 2: outbox rows may name a node whose stored state they publish, or the journal row
# holding their event's envelope (daemon.outbox); a netroot that knows only 1 would
# send those rows' empty payloads.
SCHEMA_VERSION = 2
WAL_SIZE_LIMIT = 64 << 20  # bytes the WAL file keeps after a checkpoint resets it

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
    created_at REAL NOT NULL,
    node TEXT,
    journal_seq INTEGER
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


@dataclass
class Tx(OutboxWrites, JournalWrites, NodeWrites, BuildWrites):
    """Writes of one transaction; the outbox rows commit with the state they describe."""

    conn: sqlite3.Connection
    now: float = field(default_factory=time.time)
    added: int = 0
    _after: list[Callable[[], None]] = field(default_factory=list)
    _undo: list[Callable[[], None]] = field(default_factory=list)
    _messages: list[MessageRow] = field(default_factory=list)
    _journal: list[JournalRow] = field(default_factory=list)
    _nodes: dict[str, NodeRow] = field(default_factory=dict)

    def emit_event(
        self,
        topic: str,
        envelope: bytes,
        *,
        at: datetime,
        event_type: str,
        subject: str | None,
        label: str | None,
    ) -> None:
        """An event: kept in the journal, and queued for the broker by an outbox row that
        names its journal row (the envelope is stored once)."""
        self._journal.append((at.timestamp(), event_type, subject, label, envelope))
        self._emit_journalled(topic, len(self._journal) - 1)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run callback once the transaction committed (in-memory caches follow the db)."""
        self._after.append(callback)

    def on_rollback(self, callback: Callable[[], None]) -> None:
        """Run callback if the transaction is rolled back (undo an in-memory change)."""
        self._undo.append(callback)

    def flush(self) -> None:
        """Write the buffered messages, journal rows and node states (before commit)."""
        self._flush_messages(self._flush_journal())
        self._flush_nodes()


class Closing(ABC):
    """Closed when its `with` block ends."""

    @abstractmethod
    def close(self) -> None:
        """Release what it holds."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


class Database(Closing, Outbox, Journal, NodeReads, BuildReads):
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
        # Checkpoints run past 10,000 pages (daemon.checkpoint): a WAL grown that large
        # in a storm is cut back when it restarts, not kept on disk for good.
        self._conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        self._conn.executescript(_SCHEMA)
        self._conn.executescript(JOURNAL_SCHEMA)  # added without a schema version: a new table
        self._conn.executescript(ROLLOUT_SCHEMA)  # canary rollouts (issue 12): new tables too
        self._conn.executescript(FLEET_SCHEMA)  # other boot servers' nodes (issue 12)
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is not None and int(row[0]) == 1:
            self._upgrade_from_1()
            row = (str(SCHEMA_VERSION),)
        if row is None:
            self._conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise DatabaseError(
                f"{self.path}: schema version {row[0]}, this netroot knows {SCHEMA_VERSION}"
            )

    def _upgrade_from_1(self) -> None:
        """Schema 1 to 2, in one transaction: the outbox's `node` and `journal_seq` columns.

        Not under a running daemon of an earlier netroot (a package upgraded, the
        service not restarted yet): it would send the new rows' empty payloads."""
        holder = holder_pid(lock_path(self.path.parent))
        if holder is not None and holder != os.getpid():
            raise DatabaseError(
                f"{self.path}: schema 1, in use by a running `netroot serve` (pid {holder}) of an"
                " earlier netroot: restart it (`systemctl restart netroot`; it upgrades the"
                " database to schema 2), then run this again"
            )
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            columns = {r[1] for r in self._conn.execute("PRAGMA table_info(outbox)")}
            for column in ("node TEXT", "journal_seq INTEGER"):
                if column.split()[0] not in columns:
                    self._conn.execute(f"ALTER TABLE outbox ADD COLUMN {column}")
            self._conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),)
            )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def defer_checkpoints(self, pages: int) -> None:
        """Checkpoint the WAL in commits only past `pages` (daemon.checkpoint does it before)."""
        self._conn.execute(f"PRAGMA wal_autocheckpoint = {int(pages)}")

    def rows(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read query (aggregates over the tables: daemon.web.fleet)."""
        return self._conn.execute(sql, args).fetchall()

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
