"""The event journal: every event published, kept for `events_retention`, at most `events_limit`.

The outbox forgets an event once the broker acknowledged it; the journal keeps
it, so "what happened since 08:00?" has an answer after the fact
(`netroot events --since`, the HTTP API), with the daemon stopped too.

A journal row is written in the same transaction as the event's outbox row,
not on delivery: an event that committed but waits for the broker (an outage,
or dropped at the outbox bound) still happened, and is history. Events only:
the envelopes on the events topics (image, node, controller), in publication
order; retained states, the index and node commands are not events.

Pruning is the daemon's periodic work (`JournalKeeper`): rows older than
`events_retention` go, then the oldest beyond `events_limit` rows, a small
batch per transaction with the event loop yielded between batches, so ingest
never waits on a large delete.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from controller.core.log import get_logger
from controller.daemon.components import Component
from controller.events.payloads import TYPE_PREFIX

log = get_logger("journal")

JOURNAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    type TEXT NOT NULL,
    subject TEXT,
    label TEXT,
    envelope BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_by_time ON journal (time);
CREATE INDEX IF NOT EXISTS journal_by_type ON journal (type, time);
"""

PRUNE_BATCH = 2000  # rows deleted per transaction: a few milliseconds of the event loop
PRUNE_S = 60.0  # between pruning passes

# One buffered journal row: time, type, subject, label, envelope.
JournalRow = tuple[float, str, str | None, str | None, bytes]

# Event types are dotted lowercase names: a prefix of one is safe in a GLOB pattern.
_TYPE_RE = re.compile(r"[a-z0-9_.]+")
TYPE_ALLOWED = "a prefix of an event type like node., image.build.failed or org.netroot.image."


def type_prefix(text: str) -> str:
    """The full type prefix a user's --type names (org.netroot. is implied); ValueError if none."""
    if not _TYPE_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not an event type (allowed: {TYPE_ALLOWED})")
    return text if text.startswith(TYPE_PREFIX) else TYPE_PREFIX + text


@dataclass(frozen=True, slots=True)
class JournalQuery:
    """Which events to read: since a time, optionally of a type prefix and a label."""

    since: datetime
    type_prefix: str | None = None  # full, as type_prefix() returns it
    label: str | None = None
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class JournalEvent:
    """One journalled event; `envelope` is the JSON as published."""

    seq: int
    time: datetime
    type: str
    subject: str | None
    label: str | None
    envelope: bytes


class JournalWrites:
    """A transaction's part in the journal (`db.Tx` holds the fields)."""

    conn: sqlite3.Connection
    _journal: list[JournalRow]

    def _flush_journal(self) -> int:
        """Write the buffered rows; returns the seq before the first one's.

        The seqs are given here, not left to AUTOINCREMENT, so the outbox rows can
        name them; the largest seq ever used (sqlite_sequence) is where they go on
        from, as AUTOINCREMENT would. The transaction holds the write lock.
        """
        if not self._journal:
            return 0
        row = self.conn.execute(
            "SELECT MAX(x) FROM (SELECT seq AS x FROM sqlite_sequence WHERE name = 'journal' "
            "UNION ALL SELECT MAX(seq) FROM journal)"
        ).fetchone()
        base = int(row[0]) if row[0] is not None else 0
        self.conn.executemany(
            "INSERT INTO journal (seq, time, type, subject, label, envelope) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(base + i + 1, *r) for i, r in enumerate(self._journal)],
        )
        self._journal.clear()
        return base


class Journal:
    """Reading and pruning the journal (`db.Database` holds the connection)."""

    _conn: sqlite3.Connection

    def journal_events(self, query: JournalQuery) -> list[JournalEvent]:
        """Events at or after query.since, in the order they were published."""
        known = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'journal'"
        ).fetchone()
        if known is None:
            return []  # a database no journalling netroot has written yet
        sql = "SELECT seq, time, type, subject, label, envelope FROM journal WHERE time >= ?"
        args: list[object] = [query.since.timestamp()]
        if query.type_prefix is not None:
            sql += " AND type GLOB ?"
            args.append(query.type_prefix + "*")
        if query.label is not None:
            sql += " AND label = ?"
            args.append(query.label)
        sql += " ORDER BY seq"
        if query.limit is not None:
            sql += " LIMIT ?"
            args.append(query.limit)
        return [
            JournalEvent(r[0], datetime.fromtimestamp(r[1], UTC), r[2], r[3], r[4], bytes(r[5]))
            for r in self._conn.execute(sql, args)
        ]

    def prune_journal(self, *, before: float, limit: int, batch: int = PRUNE_BATCH) -> int:
        """Delete at most `batch` rows older than `before` or beyond the newest `limit`;
        never a row an undelivered event's outbox row names (it holds its envelope)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            waiting = self._conn.execute("SELECT MIN(journal_seq) FROM outbox").fetchone()[0]
            keep = int(waiting) if waiting is not None else 2**62  # delete below this seq
            old = self._conn.execute(
                "DELETE FROM journal WHERE seq IN (SELECT seq FROM journal WHERE time < ? "
                "AND seq < ? LIMIT ?)",
                (before, keep, batch),
            ).rowcount
            over = 0
            top = self._conn.execute("SELECT MAX(seq) FROM journal").fetchone()[0]
            if top is not None and batch > old:
                # seq only grows: the rows above top - limit are at most limit.
                below = min(top - limit, keep - 1)
                over = self._conn.execute(
                    "DELETE FROM journal WHERE seq IN ("
                    " SELECT seq FROM journal WHERE seq <= ? ORDER BY seq LIMIT ?)",
                    (below, batch - old),
                ).rowcount
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        return int(old + over)


class JournalKeeper(Component):
    """Prunes the journal at start and every `interval` seconds, in small batches."""

    name = "journal"

    def __init__(
        self,
        journal: Journal,
        bounds: Callable[[], tuple[float, int]],
        interval: float = PRUNE_S,
    ) -> None:
        self.journal = journal
        self.bounds = bounds  # (retention seconds, row limit) of the current config
        self.interval = interval
        self.pruned = 0

    async def prune(self, now: datetime | None = None) -> int:
        """One pass: batches until a batch finds less than a full one to delete."""
        retention, limit = self.bounds()
        before = (now or datetime.now(UTC)).timestamp() - retention
        total = 0
        while True:
            deleted = self.journal.prune_journal(before=before, limit=limit)
            total += deleted
            if deleted < PRUNE_BATCH:
                break
            await asyncio.sleep(0)  # ingest and publishing run between batches
        if total:
            log.info("journal pruned", events=total, retention_s=retention, limit=limit)
        self.pruned += total
        return total

    async def run(self) -> None:
        """Prune forever."""
        while True:
            await self.prune()
            await asyncio.sleep(self.interval)
