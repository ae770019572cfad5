"""Components that move messages between the broker and the database."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

from controller.daemon.nodebook import NodeBook
from controller.db import Database
from controller.log import get_logger
from controller.mqtt import BrokerLink, LinkDown, Message

log = get_logger("publisher")

WINDOW = 64  # messages handed to the client before awaiting their acknowledgements
INGEST_BATCH = 1000  # reports applied in one transaction
# After the first report, wait this long for more: reports come in bursts
# (a boot storm), and one transaction for many is far cheaper than many.
GATHER_S = 0.01
RETRY_S = 0.5
# While node reports wait to be applied, the publisher sends one window, then
# waits for the backlog to clear (at most this long): in a boot storm states are
# stored first and events follow; they are durable in the outbox meanwhile.
YIELD_S = 0.5


class _Component:
    """Nothing to set up or tear down: shutdown order is the supervisor's business."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class Publisher(_Component):
    """Publishes the outbox in order, deleting each message once the broker acknowledged it."""

    name = "publisher"

    def __init__(
        self, db: Database, link: BrokerLink | None, ingest_idle: asyncio.Event | None = None
    ) -> None:
        self.db = db
        self.link = link
        self.ingest_idle = ingest_idle
        self.wake = asyncio.Event()
        self.published = 0

    def notify(self) -> None:
        """Called after a transaction added messages."""
        self.wake.set()

    async def run(self) -> None:
        """Publish forever; without a broker the outbox only fills (up to its bound)."""
        if self.link is None:
            await asyncio.Event().wait()
        while True:
            await self._round(wait=True)
            if self.ingest_idle is not None and not self.ingest_idle.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.ingest_idle.wait(), YIELD_S)

    async def _round(self, *, wait: bool) -> bool:
        """Publish one window; False when there was nothing to publish or no broker."""
        if self.link is None:
            return False
        self.wake.clear()
        rows = self.db.outbox_head(WINDOW)
        if not rows:
            if wait:
                await self.wake.wait()
            return False
        if not self.link.connected:
            if not wait:
                return False
            await self.link.wait_connected()
        try:
            acked = await self.link.publish(
                [Message(r.topic, r.payload, r.qos, r.retain) for r in rows]
            )
        except LinkDown:
            acked = 0
        self.db.outbox_delete([r.seq for r in rows[:acked]])
        self.published += acked
        if acked < len(rows):
            await asyncio.sleep(RETRY_S)  # the link notices the drop; then wait_connected()
        return True

    async def flush(self) -> None:
        """Publish what is left while connected (the caller bounds the time)."""
        if self.link is None:
            return
        while self.link.connected and await self._round(wait=False):
            pass
        if self.db.outbox_pending:
            log.warning("stopping with undelivered messages", pending=self.db.outbox_pending)


class NodeTracker(_Component):
    """Applies node reports from the broker to node states, many per transaction."""

    name = "tracker"

    def __init__(self, inbox: asyncio.Queue[Message], nodes: NodeBook) -> None:
        self.inbox = inbox
        self.nodes = nodes
        self.received = 0
        self.idle = asyncio.Event()  # set while no report waits
        self.idle.set()

    async def run(self) -> None:
        """Take what has arrived, apply it, yield to the other components, repeat."""
        while True:
            batch = [await self.inbox.get()]
            self.idle.clear()
            await asyncio.sleep(GATHER_S)
            self._take(batch)
            if self.inbox.empty():
                self.idle.set()

    def _take(self, batch: list[Message]) -> None:
        while len(batch) < INGEST_BATCH and not self.inbox.empty():
            batch.append(self.inbox.get_nowait())
        self.received += len(batch)
        self.nodes.ingest(batch)

    def drain(self) -> None:
        """Apply whatever the broker already delivered (at shutdown)."""
        while not self.inbox.empty():
            self._take([])
