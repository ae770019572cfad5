"""Timing and diff reports through the daemon's node book: stored, announced, journaled."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.config.load import parse_config
from controller.daemon.db import Database
from controller.daemon.emit import Emitter
from controller.daemon.journal import JournalQuery
from controller.daemon.mqtt import Message
from controller.daemon.nodebook import NodeBook
from controller.events.payloads import VersionSummary
from controller.events.topics import Topics

MAC = "52:54:00:ab:cd:ef"
BOOT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
V1 = "20250301T120000.000Z-0000aaaa"
TIMING = {"kernel_s": 1.5, "initrd_s": 4.25, "userspace_s": 20.0, "total_s": 25.75}
DIFF = {
    "entries": [{"change": "added", "type": "file", "size": 2, "path": "/root/drift.txt"}],
    "added": 1,
    "modified": 0,
    "deleted": 4,
    "truncated": True,
}


@pytest.fixture
def book(tmp_path: Path) -> NodeBook:
    config = parse_config({"labels": {"demo": {"recipe": "demo.toml"}}}, source="t", root=tmp_path)
    db = Database(tmp_path / "netroot.db")
    with db.transaction() as tx:
        tx.record_version(
            "demo",
            VersionSummary(
                version=V1, built_at=datetime.now(UTC), kind="full", file_count=1, size_bytes=1
            ),
        )
    return NodeBook(db, Emitter(Topics(), source="netroot://test"), config)


def report(kind: str, **fields: object) -> Message:
    body = {"kind": kind, "mac": MAC, "label": "demo", "version": V1, "boot_id": BOOT_ID, **fields}
    return Message(f"netroot/node/{MAC}/report", json.dumps(body).encode())


def journal(book: NodeBook) -> list[tuple[str, dict[str, object]]]:
    since = datetime.now(UTC) - timedelta(hours=1)
    events = book.db.journal_events(JournalQuery(since=since, type_prefix="org.netroot.node."))
    return [(e.type.removeprefix("org.netroot."), json.loads(e.envelope)["data"]) for e in events]


def test_timings_and_a_diff_answer_are_stored_and_journaled(book: NodeBook) -> None:
    assert book.ingest([report("boot")]) == 1
    assert book.ingest([report("timing", boot_timing=TIMING)]) == 1
    (state,) = book.db.nodes()
    assert state.boot_timing is not None and state.boot_timing.model_dump(exclude_none=True) == (
        TIMING
    )
    assert book.ingest([report("diff_result", command_id="c-1", diff=DIFF)]) == 1
    kinds = [kind for kind, _ in journal(book)]
    assert kinds == ["node.booted", "node.current", "node.boot_timing", "node.diff"]
    _, timed = journal(book)[2]
    assert timed["boot_timing"] == {**TIMING, "firmware_s": None, "loader_s": None}
    _, diffed = journal(book)[3]
    assert (diffed["command_id"], diffed["diff"], diffed["state"]) == ("c-1", DIFF, "up")


def test_a_timing_report_out_of_bounds_is_refused_and_changes_nothing(book: NodeBook) -> None:
    book.ingest([report("boot")])
    assert book.ingest([report("timing", boot_timing={**TIMING, "total_s": 1e9})]) == 0
    assert book.rejected == 1
    assert book.db.nodes()[0].boot_timing is None
