"""The event outbox of the state database: events wait here until the broker acknowledged them.

Every event is inserted in the same transaction as the state change it
reports (`OutboxWrites.emit` on a `db.Tx`), and deleted only once the broker
acknowledged it (`Outbox.outbox_delete`), so a crash or a broker outage
delays events and loses none.

The outbox is bounded (`mqtt.outbox_limit`): past the limit, a retained
message that a newer retained message for the same topic supersedes goes
first, then the oldest non-retained events, with the count logged and kept
in `outbox_dropped`. The latest retained state of a topic is never dropped,
and the tables holding state are never touched by the bound.

An event's row carries no payload either: it names its journal row
(`journal_seq`), which holds the envelope (daemon.journal); the journal
keeps a row an undelivered event names. Each event is stored once.

A node's retained state is queued as a reference, not as bytes: its row
names the node (`node`) and carries no payload, and the envelope is made
from the node's stored state when the row is read for publishing
(`outbox_head` joins the nodes table; `Emitter.message` wraps it). In a
boot storm that is one envelope less to build and store per report, and a
state superseded before it was published is never serialised at all. What
is published is the node's state when it is sent: it can show a change
whose events are a few messages behind it, never an older one. A row whose
node was forgotten meanwhile is not sent (the forget's empty retained
message follows it).

The publisher coalesces what it reads (`coalesce`): a retained message with a
newer retained message for the same topic further on in the same window is
superseded, so only the newer one is sent. Events (not retained) are never
coalesced: each is an occurrence that subscribers count; the journal keeps
every event anyway.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from controller.core.log import get_logger

log = get_logger("db")

# One buffered outbox row: topic, payload, qos, retain, created_at, node (its state's MAC),
# and for an event its place among the transaction's journal rows.
MessageRow = tuple[str, bytes, int, int, float, str | None, int | None]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One message waiting for the broker's acknowledgement."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    node: str | None = None  # a node's retained state: made from node_data when sent
    node_data: str | None = None  # its stored state (None: the node was forgotten since)


def coalesce(rows: Sequence[OutboxRow], barrier: str) -> tuple[list[OutboxRow], list[int]]:
    """The rows worth sending (in order) and the seqs of retained rows superseded in `rows`.

    A retained row is superseded by a later retained row of the same topic,
    unless a `barrier` row (the retained index, which promises that every state
    it counts was published before it) lies between them. A node's state row
    whose node was forgotten since is superseded as well: there is no state to
    make it from, and the forget's empty retained message follows it.
    """
    newer: set[str] = set()  # retained topics that have a later row (since the last barrier)
    send: list[OutboxRow] = []
    superseded: list[int] = []
    for row in reversed(rows):
        if row.node is not None and row.node_data is None:
            superseded.append(row.seq)
            continue
        if row.retain:
            if row.topic in newer:
                superseded.append(row.seq)
                continue
            if row.topic == barrier:
                newer.clear()
            newer.add(row.topic)
        send.append(row)
    send.reverse()
    superseded.reverse()
    return send, superseded


def seq_runs(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """The seqs as runs of consecutive numbers: (first, last) each, in order."""
    runs: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if runs and runs[-1][1] == seq - 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


class OutboxWrites:
    """A transaction's part in the outbox (`db.Tx` holds the fields)."""

    conn: sqlite3.Connection
    now: float
    added: int
    # Buffered and written with executemany at commit: a batch of node
    # reports makes thousands of these rows.
    _messages: list[MessageRow]

    def emit(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Queue a message for the broker (in the order of the calls)."""
        self._messages.append((topic, payload, qos, int(retain), self.now, None, None))
        self.added += 1

    def emit_node_state(self, topic: str, mac: str) -> None:
        """Queue the node's retained state, made from its stored row when it is sent."""
        self._messages.append((topic, b"", 1, 1, self.now, mac, None))
        self.added += 1

    def _emit_journalled(self, topic: str, journal_index: int) -> None:
        """Queue an event whose envelope is the transaction's journal row journal_index."""
        self._messages.append((topic, b"", 1, 0, self.now, None, journal_index))
        self.added += 1

    def _flush_messages(self, journal_base: int) -> None:
        """journal_base: the seq before the transaction's first journal row."""
        if self._messages:
            self.conn.executemany(
                "INSERT INTO outbox (topic, payload, qos, retain, created_at, node, journal_seq) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    row if row[6] is None else (*row[:6], journal_base + row[6] + 1)
                    for row in self._messages
                ],
            )
            self._messages.clear()


class Outbox:
    """The database's reading, bounding and deleting of outbox rows (`db.Database` holds them)."""

    _conn: sqlite3.Connection
    _outbox_count: int
    outbox_limit: int

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
            "SELECT o.seq, o.topic, COALESCE(j.envelope, o.payload), o.qos, o.retain, o.node, "
            "n.data FROM outbox AS o LEFT JOIN journal AS j ON j.seq = o.journal_seq "
            "LEFT JOIN nodes AS n ON n.mac = o.node ORDER BY o.seq LIMIT ?",
            (limit,),
        ).fetchall()
        if len(rows) > self._outbox_count or not rows:
            # The CLI added rows this process did not count (or the count is stale).
            self._outbox_count = len(rows) if len(rows) < limit else self._count_outbox()
        return [OutboxRow(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5], r[6]) for r in rows]

    def outbox_delete(self, seqs: Sequence[int]) -> None:
        """Forget messages the broker acknowledged.

        One range delete per run of consecutive seqs: a delivered window is one
        run (or a few, around what an interrupted window left), not a statement
        per message.
        """
        if not seqs:
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            deleted = self._conn.executemany(
                "DELETE FROM outbox WHERE seq BETWEEN ? AND ?", seq_runs(seqs)
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
