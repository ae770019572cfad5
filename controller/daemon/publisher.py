"""Components that move messages between the broker and the database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from controller.core.log import get_logger
from controller.daemon.components import Component
from controller.daemon.context import Context
from controller.daemon.db import Database
from controller.daemon.emit import Emitter, Health
from controller.daemon.mqtt import BrokerLink, LinkDown, Message
from controller.daemon.nodebook import NodeBook
from controller.daemon.outbox import coalesce
from controller.events.payloads import StateIndex

if TYPE_CHECKING:
    from controller.daemon.scheduler import BuildScheduler

log = get_logger("publisher")

# Outbox rows read, coalesced and handed to the broker at once; their
# acknowledgements are awaited together and the delivered rows deleted in one
# transaction. Large enough that loopback round trips and the per-window work
# cost little; a whole window is in flight at once (mqtt.MAX_INFLIGHT).
WINDOW = 1000
# While node reports wait to be applied, the publisher sends a small window and
# then waits for the backlog to clear (at most YIELD_S): in a boot storm states
# are stored first and events follow; they are durable in the outbox meanwhile.
BUSY_WINDOW = 64
INGEST_BATCH = 1000  # reports applied in one transaction (below mqtt.RECEIVE_MAXIMUM)
# After the first report, wait this long for more: reports come in bursts
# (a boot storm), and one transaction for many is far cheaper than many.
# Not when a batch is there already: in a storm, the wait was 6 % of the time
# the controller took to store 5,000 reports (bench_ingest).
GATHER_S = 0.01
GATHER_BELOW = 100
QUIET_S = 0.05  # no report for this long: ingest is idle, the publisher sends full windows
RETRY_S = 0.5
YIELD_S = 0.5
# The CLI adds events to the outbox from other processes: look for them this often.
POLL_S = 1.0
INDEX_S = 1.0  # the state index lags the node states by at most this


class Publisher(Component):
    """Publishes the outbox in order, deleting each message once the broker acknowledged it."""

    name = "publisher"

    def __init__(
        self,
        db: Database,
        link: BrokerLink | None,
        emitter: Emitter,
        ingest_idle: asyncio.Event | None = None,
    ) -> None:
        self.db = db
        self.link = link
        self.ingest_idle = ingest_idle
        self.emitter = emitter
        self.wake = asyncio.Event()
        self.published = 0
        self.coalesced = 0  # retained messages not sent: a newer one for the topic followed

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
        busy = self.ingest_idle is not None and not self.ingest_idle.is_set()
        rows = self.db.outbox_head(BUSY_WINDOW if busy else WINDOW)
        if not rows:
            if wait:
                try:
                    await asyncio.wait_for(self.wake.wait(), POLL_S)
                except TimeoutError:
                    self.db.refresh_outbox_count()
            return False
        if not self.link.connected:
            if not wait:
                return False
            await self.link.wait_connected()
        index = self.emitter.topics.state_index()
        send, superseded = coalesce(rows, barrier=index)
        try:
            acked = await self.link.publish([self.emitter.message(r) for r in send])
        except LinkDown:
            acked = 0
        # A superseded row goes with the others: its newer row is still in the outbox
        # (or delivered), so a subscriber ends with the newest state either way.
        self.db.outbox_delete([r.seq for r in send[:acked]] + superseded)
        self.published += acked
        self.coalesced += len(superseded)
        if acked < len(send):
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


class NodeTracker(Component):
    """Applies node reports from the broker to node states, many per transaction.

    A report is acknowledged to the broker (`ack`) only after the transaction that
    applied it committed: the broker's PUBACK to the node is a promise, and a report
    this process still held when it died is delivered again (an idempotent repeat).
    """

    name = "tracker"

    def __init__(
        self,
        inbox: asyncio.Queue[Message],
        nodes: NodeBook,
        ack: Callable[[Sequence[Message]], object] | None = None,
        quiet_s: float = QUIET_S,
    ) -> None:
        self.inbox = inbox
        self.nodes = nodes
        self.ack = ack
        self.quiet_s = quiet_s
        self.received = 0
        self.idle = asyncio.Event()  # set while no report waits
        self.idle.set()
        # Taken from the inbox, not yet applied: drain() applies them if run() is cancelled.
        self._held: list[Message] = []

    async def run(self) -> None:
        """Take what has arrived, apply it, yield to the other components, repeat."""
        while True:
            if self.idle.is_set():
                message = await self.inbox.get()
            else:
                # Idle only after a quiet moment: right after a batch is acknowledged
                # the inbox is empty until the broker sends the next one. The next
                # report is taken as soon as it comes (a sleep of QUIET_S here, whatever
                # came meanwhile, was a third of a 5,000-report burst: bench_ingest).
                try:
                    async with asyncio.timeout(self.quiet_s):
                        message = await self.inbox.get()
                except TimeoutError:
                    self.idle.set()
                    continue
            self._held.append(message)
            self.idle.clear()
            await asyncio.sleep(0)  # what the broker sent meanwhile is read in first
            if self.inbox.qsize() < GATHER_BELOW:
                # A trickle: wait a moment for more, so that many share a transaction.
                await asyncio.sleep(GATHER_S)
            self._take()

    def _take(self) -> None:
        batch, self._held = self._held, []
        while len(batch) < INGEST_BATCH and not self.inbox.empty():
            batch.append(self.inbox.get_nowait())
        if not batch:
            return
        self.received += len(batch)
        # Refused reports are acknowledged too: sent again, they would be refused again.
        self.nodes.ingest(batch)  # commits, or raises and nothing is acknowledged
        if self.ack is not None:
            self.ack(batch)

    def drain(self) -> None:
        """Apply (and acknowledge) whatever the broker already delivered (at shutdown)."""
        while self._held or not self.inbox.empty():
            self._take()


class StatusBeacon(Component):
    """The retained controller status: at each connection, then every `status_interval`.

    Published directly, not through the outbox: a presence stuck behind
    thousands of queued events would say nothing about now.
    """

    name = "status"

    def __init__(self, ctx: Context, scheduler: BuildScheduler) -> None:
        self.ctx = ctx
        self.scheduler = scheduler
        self.link: BrokerLink | None = None
        self.started_at = datetime.now(UTC)
        self.published = 0

    def health(self) -> Health:
        """What the status reports besides online/offline."""
        db = self.ctx.db
        return Health(
            started_at=self.started_at,
            connections=self.link.connections if self.link else 0,
            outbox_pending=db.outbox_pending,
            outbox_dropped=db.outbox_dropped(),
            queued_builds=len(db.builds(states=["queued"])),
            running_builds=tuple(sorted(self.scheduler.running)),
            heartbeat_s=self.ctx.config.mqtt.status_interval,
        )

    def hello(self) -> Message:
        """The online status of a connection that just came up."""
        since = self.link.connected_since if self.link else None
        return self.ctx.emitter.status("online", since=since, health=self.health())

    def goodbye(self) -> Message:
        """The offline status of a clean stop."""
        return self.ctx.emitter.status("offline", health=self.health())

    async def run(self) -> None:
        """Refresh the status while connected."""
        link = self.link
        if link is None:
            await asyncio.Event().wait()
            return
        while True:
            await link.wait_connected()
            await asyncio.sleep(self.ctx.config.mqtt.status_interval)
            if not link.connected:
                continue  # the next connection says hello itself
            with contextlib.suppress(LinkDown):
                self.published += await link.publish([self.hello()])


class IndexKeeper(Component):
    """The retained index of labels and node counts, republished when it changes.

    Through the outbox, after the node states it counts: a subscriber that has
    the index has had every state it counts published before it.
    """

    name = "index"

    def __init__(self, ctx: Context, interval: float = INDEX_S) -> None:
        self.ctx = ctx
        self.interval = interval
        self.last: StateIndex | None = None

    def snapshot(self) -> StateIndex:
        """The index of what the controller holds now."""
        nodes = self.ctx.nodes
        labels: dict[str, dict[str, int]] = {label: {} for label in self.ctx.config.labels}
        labels.update({label: {} for label in nodes.active})
        unlabelled: dict[str, int] = {}
        for node in nodes.nodes.values():
            counts = labels.setdefault(node.label, {}) if node.label else unlabelled
            counts[node.state] = counts.get(node.state, 0) + 1
        return StateIndex.model_validate(
            {
                "labels": {
                    label: {"active": nodes.active.get(label), "nodes": counts}
                    for label, counts in sorted(labels.items())
                },
                "unlabelled": unlabelled,
                "node_count": len(nodes.nodes),
            }
        )

    def publish_if_changed(self) -> bool:
        """Emit the index if it differs from the last one; True if it did."""
        index = self.snapshot()
        if index == self.last:
            return False
        with self.ctx.db.transaction() as tx:
            self.ctx.emitter.index(tx, index)
        self.last = index
        return True

    async def run(self) -> None:
        """Look every `interval` seconds: cheap, and a boot storm makes one index a second."""
        while True:
            self.publish_if_changed()
            await asyncio.sleep(self.interval)
