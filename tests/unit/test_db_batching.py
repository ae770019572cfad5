"""Batched ingest and the publisher's coalescing of superseded retained states."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.config.load import parse_config
from controller.daemon.db import Database
from controller.daemon.emit import Emitter
from controller.daemon.mqtt import Message
from controller.daemon.nodebook import NodeBook
from controller.daemon.outbox import OutboxRow, coalesce
from controller.events.payloads import VersionSummary
from controller.events.topics import Topics

BOOT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
V1 = "20250301T120000.000Z-0000aaaa"
INDEX = "netroot/state/index"


def mac(i: int) -> str:
    return f"52:54:00:00:{i >> 8:02x}:{i & 0xFF:02x}"


def report(i: int, version: str = V1) -> Message:
    body = {"kind": "boot", "mac": mac(i), "label": "demo", "version": version, "boot_id": BOOT_ID}
    return Message(f"netroot/node/{mac(i)}/report", json.dumps(body).encode())


@pytest.fixture
def book(tmp_path: Path) -> NodeBook:
    config = parse_config(
        {"labels": {"demo": {"recipe": "demo.toml"}}}, source="test", root=tmp_path
    )
    db = Database(tmp_path / "netroot.db")
    with db.transaction() as tx:  # reports are accepted only for versions the store has
        summary = VersionSummary(
            version=V1, built_at=datetime.now(UTC), kind="full", file_count=1, size_bytes=1
        )
        tx.record_version("demo", summary)
    return NodeBook(db, Emitter(Topics()), config)


def test_a_batch_with_bad_messages_still_stores_all_the_others(book: NodeBook) -> None:
    batch = [report(i) for i in range(300)]
    batch[100] = Message(f"netroot/node/{mac(100)}/report", b"{not json")
    batch[200] = report(200, version="20990101T000000.000Z-0000ffff")  # no such version
    assert book.ingest(batch) == 298
    assert book.accepted == 298
    assert book.rejected == 2
    stored = {n.mac for n in book.db.nodes()}
    assert stored == {mac(i) for i in range(300)} - {mac(100), mac(200)}
    # Each stored node's events and retained state are in the outbox, from the one commit.
    topics = [r.topic for r in book.db.outbox_head(10_000)]
    assert topics.count(f"netroot/state/node/{mac(0)}") == 1
    assert sum(t.startswith("netroot/state/node/") for t in topics) == 298


def row(seq: int, topic: str, *, retain: bool) -> OutboxRow:
    return OutboxRow(seq, topic, f"{seq}".encode(), 1, retain)


def test_only_the_newest_retained_state_of_a_topic_is_sent_and_every_event() -> None:
    a, b = "netroot/state/node/a", "netroot/state/node/b"
    ev = "netroot/events/node/a"
    rows = [
        row(1, a, retain=True),
        row(2, ev, retain=False),
        row(3, a, retain=True),
        row(4, ev, retain=False),
        row(5, b, retain=True),
        row(6, ev, retain=False),
        row(7, a, retain=True),
    ]
    send, superseded = coalesce(rows, barrier=INDEX)
    assert [r.seq for r in send] == [2, 4, 5, 6, 7]
    assert superseded == [1, 3]


def test_a_state_is_not_coalesced_across_the_index_that_counts_it() -> None:
    a = "netroot/state/node/a"
    rows = [
        row(1, a, retain=True),
        row(2, INDEX, retain=True),  # promises: every state it counts was sent before it
        row(3, a, retain=True),
        row(4, a, retain=True),
    ]
    send, superseded = coalesce(rows, barrier=INDEX)
    assert [r.seq for r in send] == [1, 2, 4]
    assert superseded == [3]
    # A newer index supersedes the older one: state 1 then precedes the index sent.
    send, superseded = coalesce([*rows, row(5, INDEX, retain=True)], barrier=INDEX)
    assert [r.seq for r in send] == [4, 5]
    assert superseded == [1, 2, 3]


def test_an_empty_retained_message_supersedes_the_state_it_clears() -> None:
    a = "netroot/state/node/a"
    send, superseded = coalesce([row(1, a, retain=True), row(2, a, retain=True)], barrier=INDEX)
    assert [r.seq for r in send] == [2]
    assert superseded == [1]


def test_the_state_of_a_node_forgotten_since_it_was_queued_is_not_sent() -> None:
    a = "netroot/state/node/52:54:00:00:00:0a"
    b = "netroot/state/node/52:54:00:00:00:0b"
    rows = [
        OutboxRow(1, a, b"", 1, True, node="52:54:00:00:00:0a", node_data=None),  # forgotten
        OutboxRow(2, b, b"", 1, True, node="52:54:00:00:00:0b", node_data='{"state": "up"}'),
        row(3, a, retain=True),  # the forget's empty retained message (here: any later row)
    ]
    send, superseded = coalesce(rows, barrier=INDEX)
    assert ([r.seq for r in send], superseded) == ([2, 3], [1])
