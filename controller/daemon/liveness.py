"""The node liveness component: the IO shell around controller.events.liveness.

Every tick it looks at the broker link (reconnects are counted by
`BrokerLink.connections`), asks the nodes it believes up to `report` after a
reconnect (rate-limited), settles held wills, marks silent nodes lost,
forgets expired ones and republishes node states whose last_seen lags.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from controller.core.log import get_logger
from controller.daemon.components import Component
from controller.daemon.context import Context
from controller.daemon.mqtt import BrokerLink
from controller.events.liveness import Resync, expired, last_seen_due, next_check, silent
from controller.events.node_inputs import Offline
from controller.events.nodes import RUNNING

log = get_logger("liveness")

TICK_S = 0.1  # how often the link is looked at and report commands go out
SCAN_S = 1.0  # how often every node is judged (silence, expiry, last_seen)


class NodeWatch(Component):
    """Resynchronises nodes after reconnects and judges silence; one named component."""

    name = "liveness"

    def __init__(
        self,
        ctx: Context,
        link: BrokerLink | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ctx = ctx
        self.link = link
        self.clock = clock
        self.resync = Resync(ctx.config.resync_rate)
        self.connections = 0
        self.connected = False
        self.asked = 0  # report commands sent
        self._next_scan = 0.0
        # When each node is judged next (a POSIX time; events.liveness.next_check), and
        # a heap of them: a scan looks at the nodes whose time came and those that changed.
        self._next: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._rules: tuple[object, ...] | None = None  # what the plans were made with

    async def run(self) -> None:
        """Tick until cancelled."""
        while True:
            self.tick()
            await asyncio.sleep(TICK_S)

    def tick(self) -> None:
        """One round of every duty (synchronous: each is one short transaction)."""
        now = self.clock()
        config = self.ctx.config
        self.resync.rate = config.resync_rate
        self.ctx.nodes.gate.grace = config.resync_grace
        self._observe_link(now)
        self._settle_wills(now)
        self._send_reports(now)
        if now >= self._next_scan:
            self._next_scan = now + SCAN_S
            self._scan(datetime.now(UTC))

    def _observe_link(self, now: float) -> None:
        link = self.link
        if link is None:
            return
        connected, connections = link.connected, link.connections
        changed = connections != self.connections or connected != self.connected
        if changed:
            self.ctx.nodes.gate.link_changed(now)
        if connections > self.connections and self.connections > 0:
            # A reconnect (not our first connection): what did we miss while away?
            # Wills the broker fired going down, reports that went nowhere.
            believed_up = sorted(m for m, n in self.ctx.nodes.nodes.items() if n.state in RUNNING)
            self.resync.add(believed_up)
            log.info("broker reconnected: asking nodes to report", nodes=len(believed_up))
        self.connections, self.connected = connections, connected

    def _settle_wills(self, now: float) -> None:
        nodes = self.ctx.nodes
        verdicts = nodes.gate.due(now, connected=self.link is None or self.link.connected)
        if verdicts.ask:
            self.resync.add(verdicts.ask, first=True)
        if verdicts.lost:
            with self.ctx.db.transaction() as tx:
                for will in verdicts.lost:
                    nodes.offline(tx, will)

    def _send_reports(self, now: float) -> None:
        if self.link is None or not self.link.connected or not self.resync.queue:
            return
        macs = self.resync.take(now)
        if not macs:
            return
        nodes = self.ctx.nodes
        with self.ctx.db.transaction() as tx:
            for mac in macs:
                nodes.ask_report(tx, mac, "controller reconnected to the broker")
        for mac in macs:
            nodes.gate.asked(mac, now)
        self.asked += len(macs)

    def _scan(self, now: datetime) -> None:
        config = self.ctx.config
        nodes = self.ctx.nodes
        timeout = config.silence_timeout
        listening = self._listening_since()
        lost, gone, refresh, later = [], [], [], []
        for mac in self._due(now, listening):
            node = nodes.nodes.get(mac)
            if node is None:
                continue
            if silent(node, now=now, timeout=timeout, listening_since=listening):
                lost.append(mac)
            elif expired(node, now=now, expiry=config.node_expiry, configured=mac in config.nodes):
                gone.append(mac)
            elif last_seen_due(node, nodes.published_seen.get(mac), config.last_seen_refresh):
                refresh.append(mac)
            else:
                later.append(mac)  # its time came, its verdict not (the link came up since)
        self._plan(later, now, listening, at_least=now + timedelta(seconds=SCAN_S))
        if not (lost or gone or refresh):
            return
        reason = f"silent for more than {timeout:g} s (heartbeat_timeout)"
        nodes.touched.update(lost, gone, refresh)  # planned again, whatever happens below
        with self.ctx.db.transaction() as tx:
            for mac in lost:
                nodes.apply(tx, mac, Offline(at=now, reason=reason))
            for mac in gone:
                nodes.forget(tx, mac)
            for mac in refresh:
                nodes.republish(tx, mac)
        if lost or gone:
            log.info("node liveness", lost_by_silence=len(lost), forgotten=len(gone))

    def _due(self, now: datetime, listening: datetime | None) -> list[str]:
        """Nodes whose next check has come, after planning those changed since the last scan."""
        nodes, config = self.ctx.nodes, self.ctx.config
        rules = (
            config.silence_timeout,
            config.node_expiry,
            config.last_seen_refresh,
            frozenset(config.nodes),
        )
        if rules != self._rules:  # the first scan, or a reload changed how nodes are judged
            self._rules = rules
            self._heap, self._next = [], {}
            nodes.touched.update(nodes.nodes)
        touched, nodes.touched = nodes.touched, set()
        self._plan(touched, now, listening)
        if len(self._heap) > 4 * len(self._next) + 1024:
            # Superseded entries pile up (every report plans a node again): start afresh.
            self._heap = [(t, mac) for mac, t in self._next.items()]
            heapq.heapify(self._heap)
        due: list[str] = []
        stamp = now.timestamp()
        while self._heap and self._heap[0][0] <= stamp:
            when, mac = heapq.heappop(self._heap)
            if self._next.get(mac) == when:
                del self._next[mac]
                due.append(mac)
        return due

    def _plan(
        self,
        macs: Iterable[str],
        now: datetime,
        listening: datetime | None,
        at_least: datetime | None = None,
    ) -> None:
        """When to judge each node next (never, while nothing about it changes)."""
        nodes, config = self.ctx.nodes, self.ctx.config
        known, published = nodes.nodes, nodes.published_seen
        timeout, expiry = config.silence_timeout, config.node_expiry
        refresh, configured = config.last_seen_refresh, config.nodes
        plans, heap = self._next, self._heap
        for mac in macs:
            node = known.get(mac)
            when = None
            if node is not None:
                when = next_check(
                    node,
                    published=published.get(mac),
                    now=now,
                    timeout=timeout,
                    expiry=expiry,
                    refresh=refresh,
                    configured=mac in configured,
                    listening_since=listening,
                )
            if when is None:
                plans.pop(mac, None)
                continue
            if at_least is not None:
                when = max(when, at_least)
            stamp = when.timestamp()
            plans[mac] = stamp
            heapq.heappush(heap, (stamp, mac))

    def _listening_since(self) -> datetime | None:
        """Since when we have been hearing reports (None: not now)."""
        if self.link is None:
            return None  # no broker, no reports: silence means nothing
        return self.link.connected_since if self.link.connected else None
