"""The node tracker acknowledges reports only once the transaction applying them committed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.config.load import parse_config
from controller.daemon.db import Database
from controller.daemon.emit import Emitter
from controller.daemon.mqtt import Message, Receipt
from controller.daemon.nodebook import NodeBook
from controller.daemon.publisher import NodeTracker
from controller.events.payloads import VersionSummary
from controller.events.topics import Topics

BOOT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
V1 = "20250301T120000.000Z-0000aaaa"


def mac(i: int) -> str:
    return f"52:54:00:00:00:{i:02x}"


def report(i: int) -> Message:
    body = {"kind": "boot", "mac": mac(i), "label": "demo", "version": V1, "boot_id": BOOT_ID}
    return Message(
        f"netroot/node/{mac(i)}/report", json.dumps(body).encode(), receipt=Receipt(1, i + 1, 1)
    )


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


class Acks:
    """Records acknowledgements, and what another connection to the database saw then."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mids: list[int] = []
        self.committed: list[set[str]] = []
        self.target = 0
        self.reached = asyncio.Event()  # set once `target` messages are acknowledged

    def __call__(self, messages: Sequence[Message]) -> None:
        self.mids += [m.receipt.mid for m in messages if m.receipt is not None]
        with Database(self.path) as other:
            self.committed.append({n.mac for n in other.nodes()})
        if len(self.mids) >= self.target:
            self.reached.set()


def test_reports_are_acknowledged_in_order_after_their_commit(
    book: NodeBook, tmp_path: Path
) -> None:
    acks = Acks(tmp_path / "netroot.db")

    async def scenario() -> None:
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        tracker = NodeTracker(inbox, book, ack=acks)
        task = asyncio.create_task(tracker.run())
        for i in range(50):
            inbox.put_nowait(report(i))
        inbox.put_nowait(Message("netroot/node/x/report", b"{", receipt=Receipt(1, 99, 1)))
        acks.target = 51
        async with asyncio.timeout(20):  # a guard against hanging
            await acks.reached.wait()
        task.cancel()

    asyncio.run(scenario())
    # In arrival order (MQTT asks for it); the refused report too: it would only be refused again.
    assert acks.mids == [*range(1, 51), 99]
    seen: set[str] = set()
    for committed in acks.committed:
        assert committed >= seen  # each acknowledgement came after its batch was committed
        seen = committed
    assert seen == {mac(i) for i in range(50)}


def test_a_batch_that_does_not_commit_is_not_acknowledged(book: NodeBook, tmp_path: Path) -> None:
    acks = Acks(tmp_path / "netroot.db")
    tracker = NodeTracker(asyncio.Queue(), book, ack=acks)
    tracker.inbox.put_nowait(report(1))
    book.db.close()  # the transaction cannot happen
    with pytest.raises(Exception):  # noqa: B017 (whatever sqlite raises)
        tracker.drain()
    assert acks.mids == []


def test_drain_applies_and_acknowledges_what_run_held_when_cancelled(
    book: NodeBook, tmp_path: Path
) -> None:
    acks = Acks(tmp_path / "netroot.db")

    async def scenario() -> NodeTracker:
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        tracker = NodeTracker(inbox, book, ack=acks)
        task = asyncio.create_task(tracker.run())
        inbox.put_nowait(report(1))
        await asyncio.sleep(0)  # one turn: the tracker takes it and starts gathering more
        assert inbox.empty()
        assert not tracker.idle.is_set()
        inbox.put_nowait(report(2))
        task.cancel()  # while it gathers more: report 1 is out of the inbox, not yet applied
        await asyncio.wait([task])
        return tracker

    tracker = asyncio.run(scenario())
    tracker.drain()
    assert acks.mids == [2, 3]
    assert {n.mac for n in book.db.nodes()} == {mac(1), mac(2)}


def test_a_report_during_the_quiet_moment_is_applied_without_waiting_for_its_end(
    book: NodeBook, tmp_path: Path
) -> None:
    # After a batch the tracker waits a quiet moment before it calls ingest idle; a
    # report coming meanwhile is taken at once (sleeping the moment out stalled a
    # boot storm once per batch). The moment here is far longer than the deadline.
    acks = Acks(tmp_path / "netroot.db")

    async def scenario() -> None:
        tracker = NodeTracker(asyncio.Queue(), book, ack=acks, quiet_s=600)
        task = asyncio.create_task(tracker.run())
        tracker.inbox.put_nowait(report(1))
        acks.target = 1
        async with asyncio.timeout(20):
            await acks.reached.wait()
        acks.reached.clear()
        tracker.inbox.put_nowait(report(2))
        acks.target = 2
        async with asyncio.timeout(20):  # not the 600 s of the quiet moment
            await acks.reached.wait()
        assert not tracker.idle.is_set()  # still within the quiet moment
        task.cancel()

    asyncio.run(scenario())
    assert acks.mids == [2, 3]


def test_ingest_is_idle_after_a_quiet_moment(book: NodeBook, tmp_path: Path) -> None:
    acks = Acks(tmp_path / "netroot.db")

    async def scenario() -> None:
        tracker = NodeTracker(asyncio.Queue(), book, ack=acks, quiet_s=0.01)
        task = asyncio.create_task(tracker.run())
        tracker.inbox.put_nowait(report(1))
        acks.target = 1
        async with asyncio.timeout(20):
            await acks.reached.wait()
        assert not tracker.idle.is_set()  # a report was just applied: not idle yet
        async with asyncio.timeout(20):
            await tracker.idle.wait()  # the publisher sends full windows again
        assert acks.mids == [2]
        task.cancel()

    asyncio.run(scenario())
