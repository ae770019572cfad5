"""The state database: events commit with their state, the outbox is ordered and bounded."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.daemon.db import Database, DatabaseError, NodeGuard
from controller.daemon.lock import lock_path
from controller.daemon.outbox import seq_runs
from controller.events.node_events import NodeState
from controller.events.payloads import VersionSummary

MAC_A = "52:54:00:00:00:0a"
MAC_B = "52:54:00:00:00:0b"
V1 = "20250301T120000.000Z-0000aaaa"
V2 = "20250302T120000.000Z-0000bbbb"


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(tmp_path / "netroot.db", outbox_limit=100)


def node(mac: str, state: str = "up", version: str | None = V1, label: str = "demo") -> NodeState:
    action = "reboot" if state == "stale" else None
    return NodeState(mac=mac, state=state, label=label, version=version, action=action)


def topics(db: Database) -> list[str]:
    return [r.topic for r in db.outbox_head(10_000)]


def test_state_and_its_event_commit_together(db: Database) -> None:
    with db.transaction() as tx:
        tx.put_node(node(MAC_A))
        tx.emit("netroot/events/node/a", b"booted")
    assert [n.mac for n in db.nodes()] == [MAC_A]
    assert [r.payload for r in db.outbox_head(10)] == [b"booted"]
    assert db.outbox_pending == 1


def test_a_failed_transaction_leaves_neither_state_nor_event(db: Database) -> None:
    undone: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), db.transaction() as tx:
        tx.put_node(node(MAC_A))
        tx.emit("netroot/events/node/a", b"booted")
        tx.on_rollback(lambda: undone.append("memory restored"))
        raise RuntimeError("boom")
    assert db.nodes() == []
    assert db.outbox_head(10) == []
    assert db.outbox_pending == 0
    assert undone == ["memory restored"]


def test_committed_events_survive_a_reopen_and_keep_their_order(tmp_path: Path) -> None:
    path = tmp_path / "netroot.db"
    first = Database(path)
    for i in range(5):
        with first.transaction() as tx:
            tx.emit(f"t/{i % 2}", str(i).encode())
    # No close(): as after SIGKILL, nothing but the committed transactions remains.
    second = Database(path)
    assert [r.payload for r in second.outbox_head(10)] == [b"0", b"1", b"2", b"3", b"4"]
    assert second.outbox_pending == 5
    first.close()
    second.close()


def test_acknowledged_messages_leave_the_outbox(db: Database) -> None:
    with db.transaction() as tx:
        for i in range(3):
            tx.emit("t", str(i).encode(), retain=i == 2)
    rows = db.outbox_head(2)
    assert [r.payload for r in rows] == [b"0", b"1"]
    db.outbox_delete([r.seq for r in rows])
    db.outbox_delete([rows[0].seq])  # a second acknowledgement of the same message
    left = db.outbox_head(10)
    assert [(r.payload, r.retain) for r in left] == [(b"2", True)]
    assert db.outbox_pending == 1


def test_acknowledged_runs_are_deleted_by_range_and_nothing_between_them(db: Database) -> None:
    assert seq_runs([7, 3, 4, 5, 9, 8, 4, 12]) == [(3, 5), (7, 9), (12, 12)]
    assert seq_runs([]) == []
    with db.transaction() as tx:
        for i in range(10):
            tx.emit("t", str(i).encode())
    rows = db.outbox_head(10)
    gone = [r.seq for r in rows if r.payload not in (b"3", b"6", b"7")]
    db.outbox_delete(gone)  # three runs: 0-2, 4-5, 8-9
    assert [r.payload for r in db.outbox_head(10)] == [b"3", b"6", b"7"]
    assert db.outbox_pending == 3


def test_after_commit_callbacks_and_the_outbox_hook_run_only_on_commit(db: Database) -> None:
    calls: list[str] = []
    db.on_outbox = lambda: calls.append("outbox")
    with db.transaction() as tx:
        tx.after_commit(lambda: calls.append("committed"))
        tx.emit("t", b"x")
    with db.transaction() as tx:
        tx.put_node(node(MAC_A))  # no message: the publisher is not woken
    assert calls == ["committed", "outbox"]


def test_transactions_do_not_nest(db: Database) -> None:
    with db.transaction(), pytest.raises(RuntimeError, match="nest"), db.transaction():
        pass


# --- the bound ----------------------------------------------------------------


def test_past_the_bound_the_oldest_events_go_and_the_count_is_kept(db: Database) -> None:
    for i in range(130):
        with db.transaction() as tx:
            tx.emit("netroot/events/image/demo", f"{i}".encode())
    payloads = [int(r.payload) for r in db.outbox_head(1000)]
    assert payloads == list(range(30, 130))
    assert db.outbox_pending == 100
    assert db.outbox_dropped() == 30


def test_the_latest_retained_state_of_a_topic_is_never_dropped(db: Database) -> None:
    with db.transaction() as tx:
        tx.emit("netroot/state/node/a", b"old state", retain=True)
        tx.emit("netroot/state/node/b", b"only state", retain=True)
    for i in range(150):
        with db.transaction() as tx:
            tx.emit("netroot/events/node/a", f"event {i}".encode())
    with db.transaction() as tx:
        tx.emit("netroot/state/node/a", b"new state", retain=True)
    rows = db.outbox_head(1000)
    retained = [r.payload for r in rows if r.retain]
    # Superseded states go first, then the oldest events; current states stay.
    assert retained == [b"only state", b"new state"]
    assert len(rows) == 100
    assert rows[-1].payload == b"new state"
    events = [r.payload for r in rows if not r.retain]
    assert events[-1] == b"event 149"
    assert events == sorted(events, key=lambda p: int(p.split()[1]))


def test_retained_states_alone_may_exceed_the_bound(db: Database) -> None:
    with db.transaction() as tx:
        for i in range(120):
            tx.emit(f"netroot/state/node/{i}", b"state", retain=True)
    assert db.outbox_pending == 120
    assert db.outbox_dropped() == 0


def test_superseded_states_are_dropped_before_any_event(db: Database) -> None:
    with db.transaction() as tx:
        tx.emit("netroot/events/image/demo", b"activated")
        for i in range(100):
            tx.emit("netroot/state/image/demo", f"state {i}".encode(), retain=True)
    rows = db.outbox_head(1000)
    assert [r.payload for r in rows] == [b"activated", b"state 99"]
    assert db.outbox_dropped() == 99


# --- builds, versions, labels ---------------------------------------------------


def test_one_queued_build_per_label_merges_later_requests(db: Database) -> None:
    with db.transaction() as tx:
        first = tx.queue_build("b1", "demo", "overlay", "edit", ["overlays/demo/a"])
        second = tx.queue_build("b2", "demo", "full", "edit of recipe", ["recipes/demo.toml"])
        other = tx.queue_build("b3", "other", "overlay", "edit", [])
    assert first == second == "b1"
    assert other == "b3"
    queued = {b.label: b for b in db.builds(states=["queued"])}
    assert queued["demo"].kind == "full"  # full wins
    assert queued["demo"].paths == ("overlays/demo/a", "recipes/demo.toml")
    assert queued["demo"].reason == "edit of recipe"
    with db.transaction() as tx:
        tx.start_build("b1")
        # An edit during the build queues exactly one follow-up.
        follow = tx.queue_build("b4", "demo", "overlay", "edit", ["overlays/demo/b"])
        again = tx.queue_build("b5", "demo", "overlay", "edit", ["overlays/demo/c"])
    assert follow == again == "b4"
    assert [b.build_id for b in db.builds(label="demo")] == ["b1", "b4"]
    with db.transaction() as tx:
        tx.finish_build("b1", "failed", step="base", error="no network")
    done = db.builds(label="demo", states=["failed"])[0]
    assert (done.step, done.error, done.finished_at is not None) == ("base", "no network", True)


def test_versions_seen_and_pruned(db: Database) -> None:
    built = datetime(2025, 3, 1, tzinfo=UTC)
    with db.transaction() as tx:
        for v in (V1, V2):
            summary = VersionSummary(
                version=v, built_at=built, kind="full", file_count=3, size_bytes=10
            )
            tx.record_version("demo", summary)
        tx.mark_gone("demo", [V1])
    assert list(db.versions("demo")) == [V2]
    assert list(db.versions("demo", gone=True)) == [V1]


def test_label_activation_time_moves_only_when_the_active_version_changes(db: Database) -> None:
    with db.transaction() as tx:
        tx.set_label("demo", V1, None)
    first = db.labels()["demo"].activated_at
    with db.transaction() as tx:
        tx.now = (first or 0) + 100
        tx.set_label("demo", V1, None)
    assert db.labels()["demo"].activated_at == first
    with db.transaction() as tx:
        tx.now = (first or 0) + 200
        tx.set_label("demo", V2, V1)
    row = db.labels()["demo"]
    assert (row.active, row.previous, row.activated_at) == (V2, V1, (first or 0) + 200)


# --- readers -------------------------------------------------------------------


def test_cli_reads_while_the_daemon_writes(db: Database, tmp_path: Path) -> None:
    with db.transaction() as tx:
        tx.put_node(node(MAC_A))
    reader = Database(tmp_path / "netroot.db", readonly=True)
    with db.transaction() as tx:
        tx.put_node(node(MAC_B))
        # The writer's transaction is open: the reader sees the last commit.
        assert [n.mac for n in reader.nodes()] == [MAC_A]
    assert [n.mac for n in reader.nodes()] == [MAC_A, MAC_B]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader._conn.execute("DELETE FROM nodes")
    reader.close()


def test_node_state_round_trips_as_json(db: Database) -> None:
    state = node(MAC_A, "stale", V1)
    with db.transaction() as tx:
        tx.put_node(state)
    assert db.nodes() == [state]
    raw = db._conn.execute("SELECT data FROM nodes").fetchone()[0]
    assert json.loads(raw)["action"] == "reboot"


def test_an_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "netroot.db"
    Database(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    conn.commit()
    conn.close()
    with pytest.raises(DatabaseError, match="schema version 99"):
        Database(path)


def _schema_1(path: Path) -> None:
    conn = sqlite3.connect(path)  # what netroot with schema 1 left: an outbox without `node`
    conn.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema', '1');"
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
        " payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,"
        " created_at REAL NOT NULL);"
        "INSERT INTO outbox (topic, payload, qos, retain, created_at)"
        " VALUES ('netroot/state/node/52:54:00:00:00:01', CAST('old state' AS BLOB), 1, 1, 0);"
    )
    conn.commit()
    conn.close()


def test_a_schema_1_database_is_upgraded_and_keeps_its_waiting_messages(tmp_path: Path) -> None:
    path = tmp_path / "netroot.db"
    _schema_1(path)
    with Database(path) as db:
        [row] = db.outbox_head(10)
        assert (row.payload, row.node) == (b"old state", None)  # published as it was queued
        assert db.rows("SELECT value FROM meta WHERE key = 'schema'") == [("2",)]
    Database(path).close()  # opened again: nothing left to upgrade


def test_a_schema_1_database_an_earlier_daemon_serves_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "netroot.db"
    _schema_1(path)
    holder = subprocess.Popen(  # an earlier `netroot serve`: it holds the daemon lock
        [sys.executable, "-c", "import fcntl, os, sys\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); os.pwrite(fd, f'{os.getpid()}\\n'.encode(), 0)\n"
         "print('held', flush=True); sys.stdin.read()",
         str(lock_path(tmp_path))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(DatabaseError, match=rf"pid {holder.pid}\) of an earlier netroot"):
            Database(path)
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT value FROM meta").fetchall() == [("1",)]  # untouched
        conn.close()
    finally:
        holder.communicate("")  # its stdin closes: it exits, and the lock goes with it
    Database(path).close()  # the daemon is gone: upgraded now


def test_a_missing_database_is_reported_to_readers(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="cannot open"):
        Database(tmp_path / "absent.db", readonly=True)


# --- the gc guard ----------------------------------------------------------------


def test_node_guard_names_versions_live_nodes_of_the_label_run(db: Database) -> None:
    with db.transaction() as tx:
        tx.put_node(node(MAC_A, "stale", V1))
        tx.put_node(node(MAC_B, "lost", V2))
        tx.put_node(node("52:54:00:00:00:0c", "up", V2, label="other"))
    guard = NodeGuard(db.path)
    assert guard.versions_in_use("demo") == {V1}
    assert guard.versions_in_use("other") == {V2}
    assert guard.versions_in_use("nobody") == set()


def test_a_build_begins_on_the_daemons_queued_row_or_a_new_one(db: Database) -> None:
    with db.transaction() as tx:
        tx.queue_build("b-queued", "demo", "overlay", "edit of x", ["x"])
    with db.transaction() as tx:
        queued = tx.begin_build("b-queued", "demo", "full", "netroot build")
        fresh = tx.begin_build("b-cli", "demo", "full", "netroot build")
    # The daemon's row keeps what it was queued for; a CLI build gets its own row.
    assert (queued.state, queued.kind, queued.reason, queued.paths) == (
        "running",
        "overlay",
        "edit of x",
        ("x",),
    )
    assert (fresh.state, fresh.kind, fresh.reason) == ("running", "full", "netroot build")
    row = db.build("b-cli")
    assert row is not None and row.started_at is not None
    assert db.build("nope") is None


def test_announced_history_lines_are_counted_per_label(db: Database) -> None:
    assert db.announced("demo") is None
    with db.transaction() as tx:
        tx.set_announced("demo", 2)
    with db.transaction() as tx:
        tx.set_announced("demo", 3)
    assert db.announced("demo") == 3
    assert db.announced("other") is None


def test_events_another_process_added_are_counted_on_refresh(tmp_path: Path) -> None:
    path = tmp_path / "netroot.db"
    daemon = Database(path)
    with Database(path) as cli, cli.transaction() as tx:
        tx.emit("netroot/events/image/demo", b"activated")
    assert daemon.outbox_pending == 0  # its counter only knows its own writes
    assert daemon.refresh_outbox_count() == 1
    assert [r.payload for r in daemon.outbox_head(10)] == [b"activated"]
    daemon.close()
