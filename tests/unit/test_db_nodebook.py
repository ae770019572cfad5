"""Node reports through the node book: validated, applied with their events, or refused."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.config.load import parse_config
from controller.core import log as logsetup
from controller.daemon.db import Database, NodeGuard
from controller.daemon.emit import Emitter
from controller.daemon.mqtt import Message, backoff_delay
from controller.daemon.nodebook import NodeBook
from controller.daemon.spool import DhcpRecord, SpoolListener, now, spool_dir, write_record
from controller.events.envelope import Envelope
from controller.events.liveness import WILL_WINDOW_S
from controller.events.node_messages import MAX_REPORT_BYTES
from controller.events.payloads import VersionSummary
from controller.events.topics import Topics

MAC = "52:54:00:ab:cd:ef"
OTHER = "52:54:00:ab:cd:00"
BOOT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
OTHER_BOOT = "9c3b6f3e-2d0a-4d7e-8a51-1f0e6c2b7a10"
V1 = "20250301T120000.000Z-0000aaaa"
V2 = "20250302T120000.000Z-0000bbbb"


@pytest.fixture(autouse=True)
def _log_to_current_stderr() -> Iterator[None]:
    # structlog binds sys.stderr when configured: follow capsys in, and back out.
    logsetup.configure()
    yield
    logsetup.configure()


@pytest.fixture
def book(tmp_path: Path) -> NodeBook:
    config = parse_config(
        {"labels": {"demo": {"recipe": "demo.toml", "auto_reboot": True}}},
        source="test",
        root=tmp_path,
    )
    db = Database(tmp_path / "netroot.db")
    with db.transaction() as tx:  # reports are accepted only for versions the store has
        for version in (V1, V2):
            summary = VersionSummary(
                version=version,
                built_at=datetime.now(UTC),
                kind="full",
                file_count=1,
                size_bytes=1,
            )
            tx.record_version("demo", summary)
    clock = Clock()
    return NodeBook(db, Emitter(Topics(), source="netroot://test"), config, clock=clock)


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def report(mac: str = MAC, *, topic_mac: str | None = None, **fields: object) -> Message:
    body: dict[str, object] = {
        "kind": "boot",
        "mac": mac,
        "label": "demo",
        "version": V1,
        "boot_id": BOOT_ID,
    }
    body.update(fields)
    return Message(f"netroot/node/{topic_mac or mac}/report", json.dumps(body).encode())


def published(book: NodeBook) -> list[tuple[str, str]]:
    """(topic, event type or command) of every queued message, as it is published."""
    out = []
    for row in book.db.outbox_head(1000):
        data = json.loads(book.emitter.message(row).payload)
        kind = data.get("type") or data.get("command")
        out.append((row.topic, str(kind).removeprefix("org.netroot.")))
    return out


def activate(book: NodeBook, version: str) -> None:
    with book.db.transaction() as tx:
        book.activation(tx, "demo", version, datetime.now(UTC))


def test_a_boot_report_is_stored_and_announced_in_one_transaction(book: NodeBook) -> None:
    activate(book, V1)
    assert book.ingest([report()]) == 1
    stored = book.db.nodes()
    assert [(n.mac, n.state, n.version) for n in stored] == [(MAC, "up", V1)]
    assert published(book) == [
        (f"netroot/events/node/{MAC}", "node.booted"),
        (f"netroot/events/node/{MAC}", "node.current"),
        (f"netroot/state/node/{MAC}", "node.state"),
    ]
    envelope = Envelope.model_validate_json(book.db.outbox_head(1)[0].payload)
    assert envelope.subject == MAC
    assert envelope.source == "netroot://test"


def test_activation_makes_running_nodes_stale_and_commands_a_reboot_when_allowed(
    book: NodeBook,
) -> None:
    activate(book, V1)
    book.ingest([report()])
    book.db.outbox_delete([r.seq for r in book.db.outbox_head(1000)])
    activate(book, V2)
    (state,) = book.db.nodes()
    assert (state.state, state.action, state.active_version) == ("stale", "reboot", V2)
    assert published(book) == [
        (f"netroot/events/node/{MAC}", "node.stale"),
        (f"netroot/state/node/{MAC}", "node.state"),
        (f"netroot/node/{MAC}/cmd", "reboot"),  # auto_reboot = true for this label
    ]
    command = json.loads(book.db.outbox_head(1000)[-1].payload)
    assert (command["boot_id"], command["version"]) == (BOOT_ID, V2)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (Message(f"netroot/node/{MAC}/report", b"\x00garbage"), "invalid JSON"),
        (Message(f"netroot/node/{MAC}/report", b"[1, 2]"), "not a JSON object"),
        (Message(f"netroot/node/{MAC}/report", b" " * (MAX_REPORT_BYTES + 1)), "exceeds"),
        (report(kind="boot", boot_id=None), "needs boot_id"),
        (report(kind="exec"), "kind"),
        (report(surprise=1), "surprise"),
        (report(OTHER, topic_mac=MAC), "does not match"),
        (Message("netroot/node/not-a-mac/report", b"{}"), "not a MAC"),
    ],
)
def test_bad_messages_are_refused_and_change_nothing(
    book: NodeBook, message: Message, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    logsetup.configure()
    assert book.ingest([message, report()]) == 1  # the good one in the batch still counts
    assert book.rejected == 1
    assert [n.mac for n in book.db.nodes()] == [MAC]
    err = capsys.readouterr().err
    assert "rejected node message" in err
    assert reason in err


def test_a_flood_of_bad_messages_logs_a_bounded_number_of_lines(
    book: NodeBook, capsys: pytest.CaptureFixture[str]
) -> None:
    logsetup.configure()
    clock = [1000.0]
    book.clock = lambda: clock[0]
    bad = Message(f"netroot/node/{MAC}/report", b"not json")
    book.ingest([bad] * 5000)
    clock[0] += 61  # the next window: one line counts what was not logged
    book.ingest([bad])
    assert book.rejected == 5001
    lines = capsys.readouterr().err.splitlines()
    (summary,) = [line for line in lines if "not logged" in line]
    logged = [line for line in lines if "rejected node message" in line and line != summary]
    assert len(logged) == 21  # 20 in the flood's minute, then the next one
    assert "4980" in summary


def test_a_node_cannot_change_another_nodes_state(book: NodeBook) -> None:
    activate(book, V1)
    book.ingest([report(OTHER)])
    before = book.db.nodes()
    book.ingest([report(OTHER, topic_mac=MAC, kind="offline")])
    assert book.db.nodes() == before
    assert book.nodes[OTHER].state == "up"


def test_a_will_marks_the_node_lost(book: NodeBook) -> None:
    activate(book, V1)
    book.ingest([report()])
    will_payload = json.dumps({"kind": "offline", "mac": MAC}).encode()
    will = Message(f"netroot/node/{MAC}/report", will_payload)
    book.ingest([will])
    # Held first: a broker going down fires every will just before our link drops.
    assert book.db.nodes()[0].state == "up"
    assert MAC in book.gate.held
    verdicts = book.gate.due(1000.0 + WILL_WINDOW_S, connected=True)
    assert [w.mac for w in verdicts.lost] == [MAC]
    with book.db.transaction() as tx:
        book.offline(tx, verdicts.lost[0])
    assert book.db.nodes()[0].state == "lost"
    assert (f"netroot/events/node/{MAC}", "node.lost") in published(book)


def test_a_report_for_a_version_the_store_lacks_is_refused(book: NodeBook) -> None:
    activate(book, V1)
    assert book.ingest([report(version="20250101T000000.000Z-00000000")]) == 0
    assert book.ingest([report(label="other")]) == 0
    assert book.db.nodes() == []
    assert book.ingest([report()]) == 1


def test_new_nodes_beyond_max_nodes_are_refused_with_one_log_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = parse_config(
        {
            "labels": {"demo": {"recipe": "demo.toml"}},
            "max_nodes": 2,
            "nodes": {"52:54:00:00:00:09": {"label": "demo"}},
        },
        source="test",
        root=tmp_path,
    )
    db = Database(tmp_path / "netroot.db")
    with db.transaction() as tx:
        tx.record_version(
            "demo",
            VersionSummary(
                version=V1, built_at=datetime.now(UTC), kind="full", file_count=1, size_bytes=1
            ),
        )
    book = NodeBook(db, Emitter(Topics(), source="netroot://test"), config)
    logsetup.configure()  # onto capsys's stderr
    macs = [f"52:54:00:00:00:0{i}" for i in range(5)]
    assert book.ingest([report(mac) for mac in macs]) == 2
    assert book.ingest([report(macs[0], boot_id=OTHER_BOOT)]) == 1  # a known node still reports
    assert book.ingest([report("52:54:00:00:00:09")]) == 1  # a configured node always counts
    assert sorted(book.nodes) == [*macs[:2], "52:54:00:00:00:09"]
    assert book.refused_at_cap == 3
    assert capsys.readouterr().err.count("node cap reached") == 1
    with db.transaction() as tx:
        book.forget(tx, macs[0])
        book.forget(tx, macs[1])
    assert book.ingest([report(macs[4])]) == 1  # room again
    assert [n.mac for n in db.nodes()] == [macs[4], "52:54:00:00:00:09"]
    cleared = [r for r in db.outbox_head(1000) if r.topic == f"netroot/state/node/{macs[0]}"]
    assert (cleared[-1].payload, cleared[-1].retain, cleared[-1].node) == (b"", True, None)
    # Its state queued before the forget has no stored row to be made from: not sent.
    assert cleared[:-1] and {(r.node, r.node_data) for r in cleared[:-1]} == {(macs[0], None)}


def test_a_queued_node_state_is_published_as_the_node_is_stored_when_sent(
    book: NodeBook,
) -> None:
    activate(book, V1)
    book.ingest([report()])
    activate(book, V2)  # stale now: its state is queued twice, stored once
    states = [r for r in book.db.outbox_head(1000) if r.topic == f"netroot/state/node/{MAC}"]
    assert [(r.payload, r.retain, r.node) for r in states] == [(b"", True, MAC)] * 2
    [stored] = book.db.rows("SELECT data FROM nodes WHERE mac = ?", (MAC,))
    for row in states:
        sent = book.emitter.message(row)
        envelope = Envelope.model_validate_json(sent.payload)
        assert (sent.retain, envelope.type, envelope.subject) == (
            True,
            "org.netroot.node.state",
            MAC,
        )
        assert envelope.data == json.loads(stored[0]) and envelope.data["state"] == "stale"


def test_memory_follows_a_rolled_back_transaction(book: NodeBook) -> None:
    activate(book, V1)
    with pytest.raises(RuntimeError), book.db.transaction() as tx:
        book.activation(tx, "demo", V2, datetime.now(UTC))
        raise RuntimeError("disk full")
    assert book.active["demo"] == V1


def test_reconnect_backoff_doubles_to_a_cap_with_jitter() -> None:
    for attempt in range(30):
        step = min(30.0, 0.5 * 2**attempt)
        delays = {backoff_delay(attempt) for _ in range(20)}
        assert all(step / 2 <= d <= step for d in delays)
        assert len(delays) > 1  # jittered


def test_spooled_leases_are_applied_in_order_and_bad_ones_set_aside(book: NodeBook) -> None:
    config = book.config
    first = DhcpRecord(action="add", mac=MAC.upper(), ip="10.0.2.15", firmware=True, at=now())
    write_record(config, first)
    write_record(
        config, DhcpRecord(action="old", mac=MAC, ip="10.0.2.16", firmware=False, at=now())
    )
    (spool_dir(config) / "00000000000000000001-bad.json").write_text('{"kind": "dhcp"}')
    (spool_dir(config) / "00000000000000000002-big.json").write_bytes(b" " * 5000)
    # a FIFO would block the daemon's event loop on open; a symlink would read elsewhere
    os.mkfifo(spool_dir(config) / "00000000000000000003-fifo.json")
    (spool_dir(config) / "00000000000000000004-link.json").symlink_to("/etc/hostname")
    listener = SpoolListener(config, book.db, book)
    assert listener.drain() == 6
    assert listener.applied == 2
    (state,) = book.db.nodes()
    assert (state.state, str(state.ip)) == ("booting", "10.0.2.16")  # the renewal came last
    assert sorted(p.name for p in (spool_dir(config) / "rejected").iterdir()) == [
        "00000000000000000001-bad.json",
        "00000000000000000002-big.json",
        "00000000000000000003-fifo.json",
        "00000000000000000004-link.json",
    ]
    assert [p.name for p in spool_dir(config).glob("*.json")] == []


def test_the_gc_guard_counts_only_versions_a_node_could_have_booted(book: NodeBook) -> None:
    activate(book, V1)
    book.ingest([report(), report(OTHER, version=V2)])  # V2 exists but was never active
    path = book.db.path
    assert NodeGuard(path).versions_in_use("demo") == {V1, V2}  # without history: trusted
    history = [(V1, datetime(2020, 1, 1, tzinfo=UTC))]
    assert NodeGuard(path, lambda label: history).versions_in_use("demo") == {V1}
