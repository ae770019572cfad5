"""The liveness scan judges the nodes whose time came and those that changed, not every node."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from controller.config.load import parse_config
from controller.config.models import Config
from controller.daemon.context import Context
from controller.daemon.db import Database
from controller.daemon.emit import Emitter
from controller.daemon.liveness import NodeWatch
from controller.daemon.mqtt import BrokerLink, Message
from controller.daemon.nodebook import NodeBook
from controller.events.payloads import VersionSummary
from controller.events.topics import Topics

V1 = "20250301T120000.000Z-0000aaaa"
BOOT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


@dataclass
class Link:
    """What the scan reads of the broker link."""

    connected: bool
    connected_since: datetime | None
    connections: int = 1


def config(tmp_path: Path, **extra: Any) -> Config:
    raw = {"labels": {"demo": {"recipe": "demo.toml"}}, "heartbeat_timeout": 90, **extra}
    return parse_config(raw, source="test", root=tmp_path)


def setup(tmp_path: Path) -> tuple[NodeWatch, NodeBook]:
    cfg = config(tmp_path)
    db = Database(tmp_path / "netroot.db")
    with db.transaction() as tx:
        summary = VersionSummary(
            version=V1, built_at=datetime.now(UTC), kind="full", file_count=1, size_bytes=1
        )
        tx.record_version("demo", summary)
    book = NodeBook(db, Emitter(Topics(), source="netroot://test"), cfg)
    book.active["demo"] = V1
    ctx = Context(cfg, None, db, book.emitter, book, cast(Any, None))
    link = Link(connected=True, connected_since=datetime.now(UTC) - timedelta(hours=1))
    return NodeWatch(ctx, cast(BrokerLink, link)), book


def report(book: NodeBook, mac: str, kind: str = "boot") -> None:
    body = {"kind": kind, "mac": mac, "label": "demo", "version": V1, "boot_id": BOOT_ID}
    assert book.ingest([Message(f"netroot/node/{mac}/report", json.dumps(body).encode())]) == 1


def mac(i: int) -> str:
    return f"52:54:00:00:01:{i:02x}"


def test_a_silent_node_is_lost_and_one_that_spoke_is_not(tmp_path: Path) -> None:
    watch, book = setup(tmp_path)
    for i in range(3):
        report(book, mac(i))
    start = datetime.now(UTC)
    watch._scan(start)
    assert {n.state for n in book.nodes.values()} == {"up"}
    assert not book.touched  # planned: nothing waits to be looked at again
    report(book, mac(1), "heartbeat")  # spoke later: its silence starts again
    book.nodes[mac(1)] = book.nodes[mac(1)].model_copy(
        update={"last_seen": start + timedelta(seconds=60)}
    )
    watch._scan(start + timedelta(seconds=100))
    assert [book.nodes[mac(i)].state for i in range(3)] == ["lost", "up", "lost"]
    watch._scan(start + timedelta(seconds=200))
    assert book.nodes[mac(1)].state == "lost"


def test_a_reload_that_changes_the_timeout_judges_every_node_again(tmp_path: Path) -> None:
    watch, book = setup(tmp_path)
    report(book, mac(0))
    start = datetime.now(UTC)
    watch._scan(start)
    watch._scan(start + timedelta(seconds=40))
    assert book.nodes[mac(0)].state == "up"
    watch.ctx.config = config(tmp_path, heartbeat_timeout=30)
    watch._scan(start + timedelta(seconds=40))
    assert book.nodes[mac(0)].state == "lost"


def test_while_cut_off_from_the_broker_nobody_is_lost_and_silence_counts_from_reconnect(
    tmp_path: Path,
) -> None:
    watch, book = setup(tmp_path)
    report(book, mac(0))
    start = datetime.now(UTC)
    link = cast(Link, watch.link)
    link.connected, link.connected_since = False, None
    watch._scan(start + timedelta(seconds=100))
    assert book.nodes[mac(0)].state == "up"
    link.connected, link.connected_since = True, start + timedelta(seconds=150)
    watch._scan(start + timedelta(seconds=200))
    assert book.nodes[mac(0)].state == "up"
    watch._scan(start + timedelta(seconds=241))
    assert book.nodes[mac(0)].state == "lost"
