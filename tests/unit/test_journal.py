"""The event journal: written with the outbox, kept after delivery, pruned by age and count,
read with filters; and the one parser of `--since TIME`."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.cli.history import journal_query, rows
from controller.core.errors import NetrootError
from controller.core.since import parse_since
from controller.daemon.db import Database
from controller.daemon.emit import Emitter
from controller.daemon.journal import PRUNE_BATCH, JournalKeeper, JournalQuery, type_prefix
from controller.events.node_events import NodeBooted
from controller.events.nodes import PublishEvent
from controller.events.payloads import BuildStarted, ConfigReloaded
from controller.events.topics import Topics

NOW = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
MAC = "52:54:00:00:00:0a"
MAC_B = "52:54:00:00:00:0b"
BUILD_ID = "20261204T090000-demo"
BOOT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


# --- the time parser ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", NOW - timedelta(seconds=90)),
        ("10m", NOW - timedelta(minutes=10)),
        ("2h", NOW - timedelta(hours=2)),
        ("1d", NOW - timedelta(days=1)),
        ("2026-12-04T08:00", datetime(2026, 12, 4, 8, 0, tzinfo=UTC)),
        ("2026-12-04 08:00:30", datetime(2026, 12, 4, 8, 0, 30, tzinfo=UTC)),
        ("2026-12-04", datetime(2026, 12, 4, tzinfo=UTC)),
        ("2026-12-04T08:00Z", datetime(2026, 12, 4, 8, 0, tzinfo=UTC)),
        ("2026-12-04T09:00+01:00", datetime(2026, 12, 4, 8, 0, tzinfo=UTC)),
    ],
)
def test_since_reads_iso_times_and_ages(text: str, expected: datetime) -> None:
    got = parse_since(text, now=NOW)
    assert got == expected
    assert got.tzinfo is not None


@pytest.mark.parametrize(
    "text", ["", "08:00", "10", "10 m", "10w", "-1h", "yesterday", "2026-13-01"]
)
def test_since_refuses_anything_else_naming_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a time \(allowed: an ISO 8601 time like"):
        parse_since(text, now=NOW)


def test_a_bad_option_is_one_line_naming_it() -> None:
    with pytest.raises(NetrootError, match=r"^--since: 'soon' is not a time \(allowed: .*1d\)$"):
        journal_query("soon", None, None, now=NOW)
    with pytest.raises(NetrootError, match=r"^--type: 'Node\*' is not an event type"):
        journal_query("1h", "Node*", None, now=NOW)
    with pytest.raises(NetrootError, match=r"^--label: 'a/b' is not a label"):
        journal_query("1h", None, "a/b", now=NOW)


def test_a_type_prefix_implies_the_namespace() -> None:
    assert type_prefix("node.") == "org.netroot.node."
    assert type_prefix("org.netroot.image.") == "org.netroot.image."


# --- writing, reading, filtering ----------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(tmp_path / "netroot.db", outbox_limit=100)


def emit_scenario(db: Database, emitter: Emitter, at: datetime) -> None:
    """A build of demo (at `at`), then now: a node of demo booting, one of other, a reload."""
    build = BuildStarted(label="demo", build_id=BUILD_ID, kind="full", reason="edit")
    with db.transaction() as tx:
        emitter.image(tx, build, at)
    with db.transaction() as tx:  # now
        for mac, label in ((MAC, "demo"), (MAC_B, "other")):
            booted = NodeBooted(mac=mac, label=label, state="up", boot_id=BOOT_ID)
            emitter.node_effects(tx, mac, [PublishEvent(booted)])
    with db.transaction() as tx:
        emitter.controller(tx, ConfigReloaded(source="netroot.toml", labels=("demo",)))


def types(db: Database, **query: object) -> list[str]:
    q = JournalQuery(since=query.pop("since", EPOCH), **query)  # type: ignore[arg-type]
    return [e.type.removeprefix("org.netroot.") for e in db.journal_events(q)]


def test_every_event_is_journalled_in_order_and_kept_after_delivery(db: Database) -> None:
    emitter = Emitter(Topics(), source="netroot://test")
    emit_scenario(db, emitter, NOW)
    envelopes = [r.payload for r in db.outbox_head(100)]
    db.outbox_delete([r.seq for r in db.outbox_head(100)])  # the broker acknowledged them
    events = db.journal_events(JournalQuery(since=EPOCH))
    assert [e.type.removeprefix("org.netroot.") for e in events] == [
        "image.build.started",
        "node.booted",
        "node.booted",
        "controller.config_reloaded",
    ]
    # The very bytes that went to the broker.
    assert [e.envelope for e in events] == envelopes
    assert [e.subject for e in events] == ["demo", MAC, "52:54:00:00:00:0b", None]
    assert json.loads(events[0].envelope)["time"] == "2026-12-04T09:00:00Z"


def test_states_index_and_commands_are_not_events(db: Database) -> None:
    with db.transaction() as tx:
        tx.emit("netroot/state/node/x", b"{}", retain=True)
        tx.emit("netroot/node/x/cmd", b"{}")
    assert db.journal_events(JournalQuery(since=EPOCH)) == []


def test_a_rolled_back_event_is_not_history(db: Database) -> None:
    emitter = Emitter(Topics(), source="netroot://test")
    with pytest.raises(RuntimeError), db.transaction() as tx:
        emitter.controller(tx, ConfigReloaded(source="x", labels=()))
        raise RuntimeError("boom")
    assert db.journal_events(JournalQuery(since=EPOCH)) == []


def test_filters_by_time_type_prefix_and_label(db: Database) -> None:
    emitter = Emitter(Topics(), source="netroot://test")
    now = datetime.now(UTC)
    emit_scenario(db, emitter, now - timedelta(hours=3))
    assert types(db, since=now - timedelta(hours=1)) == [
        "node.booted",
        "node.booted",
        "controller.config_reloaded",
    ]
    assert types(db, type_prefix=type_prefix("node.")) == ["node.booted", "node.booted"]
    assert types(db, type_prefix=type_prefix("image.build.started")) == ["image.build.started"]
    assert types(db, type_prefix=type_prefix("image.build.failed")) == []
    assert types(db, label="demo") == ["image.build.started", "node.booted"]
    assert types(db, label="other", type_prefix=type_prefix("image.")) == []
    assert types(db, limit=1) == ["image.build.started"]


def test_the_table_shows_time_type_subject_label_and_summary(db: Database) -> None:
    emitter = Emitter(Topics(), source="netroot://test")
    emit_scenario(db, emitter, NOW)
    first = rows(db.journal_events(JournalQuery(since=EPOCH)))[0]
    assert first[:4] == ["2026-12-04 09:00:00", "image.build.started", "demo", "demo"]
    assert f"build_id={BUILD_ID}" in first[4]
    assert "kind=full" in first[4]


def test_a_read_only_open_of_a_database_without_a_journal_reads_none(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with Database(path) as older:  # as a netroot before the journal left it
        older._conn.execute("DROP TABLE journal")
    with Database(path, readonly=True) as ro:
        assert ro.journal_events(JournalQuery(since=EPOCH)) == []


# --- pruning ------------------------------------------------------------------


def fill(db: Database, count: int, at: datetime, *, delivered: bool = True) -> None:
    waiting = {r.seq for r in db.outbox_head(100_000)}
    with db.transaction() as tx:
        for i in range(count):
            tx.emit_event(
                "netroot/events/node/x", b"{}", at=at, event_type="org.netroot.node.booted",
                subject=str(i), label="demo",
            )  # fmt: skip
    if delivered:  # the broker acknowledged them: only the journal holds them now
        db.outbox_delete([r.seq for r in db.outbox_head(100_000) if r.seq not in waiting])


def subjects(db: Database) -> list[str | None]:
    return [e.subject for e in db.journal_events(JournalQuery(since=EPOCH))]


def test_pruning_drops_what_is_older_than_the_retention(db: Database) -> None:
    fill(db, 3, NOW - timedelta(days=8))
    fill(db, 2, NOW - timedelta(days=1))
    keeper = JournalKeeper(db, lambda: (7 * 86400.0, 1000))
    assert asyncio.run(keeper.prune(NOW)) == 3
    assert subjects(db) == ["0", "1"]
    assert asyncio.run(keeper.prune(NOW)) == 0


def test_pruning_keeps_the_newest_rows_within_the_limit(db: Database) -> None:
    fill(db, 5, NOW)
    fill(db, 3, NOW)
    keeper = JournalKeeper(db, lambda: (86400.0, 4))
    assert asyncio.run(keeper.prune(NOW)) == 4
    assert subjects(db) == ["4", "0", "1", "2"]


def test_pruning_keeps_what_an_undelivered_event_still_needs(db: Database) -> None:
    fill(db, 3, NOW - timedelta(days=8))
    fill(db, 2, NOW - timedelta(days=8), delivered=False)  # the broker was away
    fill(db, 2, NOW)
    keeper = JournalKeeper(db, lambda: (7 * 86400.0, 2))  # both bounds would take them
    assert asyncio.run(keeper.prune(NOW)) == 3
    assert subjects(db) == ["0", "1", "0", "1"]
    assert [r.payload for r in db.outbox_head(10)] == [b"{}", b"{}"]  # still sent whole
    db.outbox_delete([r.seq for r in db.outbox_head(10)])
    assert asyncio.run(keeper.prune(NOW)) == 2
    assert subjects(db) == ["0", "1"]


def test_pruning_a_large_backlog_goes_batch_by_batch_yielding_between(db: Database) -> None:
    fill(db, 2 * PRUNE_BATCH + 10, NOW - timedelta(days=30))
    fill(db, 5, NOW)
    keeper = JournalKeeper(db, lambda: (86400.0, 1000))
    ticks = 0

    async def other_work() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def scenario() -> int:
        task = asyncio.create_task(other_work())
        await asyncio.sleep(0)
        pruned = await keeper.prune(NOW)
        task.cancel()
        return pruned

    assert asyncio.run(scenario()) == 2 * PRUNE_BATCH + 10
    assert ticks >= 3  # the event loop ran between the batches
    assert len(subjects(db)) == 5
