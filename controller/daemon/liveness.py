"""The node liveness component: the IO shell around controller.events.liveness.

Every tick it looks at the broker link (reconnects are counted by
`BrokerLink.connections`), asks the nodes it believes up to `report` after a
reconnect (rate-limited), settles held wills, marks silent nodes lost,
forgets expired ones and republishes node states whose last_seen lags.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

from controller.core.log import get_logger
from controller.daemon.components import Component
from controller.daemon.context import Context
from controller.daemon.mqtt import BrokerLink
from controller.events.liveness import Resync, expired, last_seen_due, silent
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
        lost, gone, refresh = [], [], []
        for mac, node in nodes.nodes.items():
            if silent(node, now=now, timeout=timeout, listening_since=listening):
                lost.append(mac)
            elif expired(node, now=now, expiry=config.node_expiry, configured=mac in config.nodes):
                gone.append(mac)
            elif last_seen_due(node, nodes.published_seen.get(mac), config.last_seen_refresh):
                refresh.append(mac)
        if not (lost or gone or refresh):
            return
        reason = f"silent for more than {timeout:g} s (heartbeat_timeout)"
        with self.ctx.db.transaction() as tx:
            for mac in lost:
                nodes.apply(tx, mac, Offline(at=now, reason=reason))
            for mac in gone:
                nodes.forget(tx, mac)
            for mac in refresh:
                nodes.republish(tx, mac)
        if lost or gone:
            log.info("node liveness", lost_by_silence=len(lost), forgotten=len(gone))

    def _listening_since(self) -> datetime | None:
        """Since when we have been hearing reports (None: not now)."""
        if self.link is None:
            return None  # no broker, no reports: silence means nothing
        return self.link.connected_since if self.link.connected else None
