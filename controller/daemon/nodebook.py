"""Node states: in memory for speed, in the database for truth, changed only by `transition`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from controller.config import Config
from controller.daemon.emit import Emitter
from controller.db import Database, Tx
from controller.events import NodeMessageError, NodeReport, NodeState, parse_node_message
from controller.log import get_logger
from controller.mqtt import Message
from controller.nodes import Activation, LiveEdit, NodeInput, Policy, report_input, transition

log = get_logger("nodes")


class NodeBook:
    """Applies node inputs: new state and its events in one transaction."""

    def __init__(self, db: Database, emitter: Emitter, config: Config) -> None:
        self.db = db
        self.emitter = emitter
        self.config = config
        self.nodes: dict[str, NodeState] = {n.mac: n for n in db.nodes()}
        self.active: dict[str, str | None] = {k: r.active for k, r in db.labels().items()}
        self.rejected = 0

    def policy(self, label: str | None) -> Policy:
        """What the controller may tell the label's stale nodes to do on its own."""
        cfg = self.config.labels.get(label) if label else None
        if cfg is None:
            return Policy(auto_remount=False, auto_reboot=False)  # not ours to command
        return Policy(auto_remount=cfg.auto_remount, auto_reboot=cfg.auto_reboot)

    def set_active(self, tx: Tx, label: str, version: str | None) -> None:
        """The label's active version, as the next inputs must see it."""
        before = self.active.get(label)
        self.active[label] = version
        tx.on_rollback(lambda: self.active.__setitem__(label, before))

    def apply(self, tx: Tx, mac: str, event: NodeInput) -> NodeState:
        """Run one input through the state machine; store and announce what changed."""
        old = self.nodes.get(mac) or NodeState(mac=mac)
        new, effects = transition(old, event)
        if new != old:
            tx.put_node(new)
            before = self.nodes.get(mac)
            self.nodes[mac] = new
            tx.on_rollback(lambda: self._restore(mac, before))
        self.emitter.node_effects(tx, mac, effects)
        return new

    def _restore(self, mac: str, state: NodeState | None) -> None:
        if state is None:
            self.nodes.pop(mac, None)
        else:
            self.nodes[mac] = state

    def report(self, tx: Tx, report: NodeReport, at: datetime) -> NodeState:
        """A validated agent report (or will)."""
        event = report_input(
            report,
            at=at,
            active_version=self.active.get(report.label) if report.label else None,
            policy=self.policy(report.label),
        )
        return self.apply(tx, report.mac, event)

    def activation(self, tx: Tx, label: str, version: str, at: datetime) -> None:
        """A version of the label became active: its running nodes are judged again."""
        self.set_active(tx, label, version)
        event = Activation(at=at, label=label, version=version, policy=self.policy(label))
        for mac, state in sorted(self.nodes.items()):
            if state.label == label:
                self.apply(tx, mac, event)

    def live_edit(self, tx: Tx, label: str, version: str, at: datetime) -> None:
        """`netroot shell --live` changed a version in place: its nodes must remount."""
        event = LiveEdit(at=at, label=label, version=version, policy=self.policy(label))
        for mac, state in sorted(self.nodes.items()):
            if state.label == label:
                self.apply(tx, mac, event)

    def ingest(self, messages: Sequence[Message]) -> int:
        """Validate and apply node reports in one transaction; returns how many were accepted."""
        accepted = 0
        prefix = self.emitter.topics.prefix
        with self.db.transaction() as tx:
            for message in messages:
                try:
                    report = parse_node_message(message.topic, message.payload, prefix)
                except NodeMessageError as exc:
                    self._reject(exc.topic, exc.reason)
                    continue
                try:
                    self.report(tx, report, datetime.now(UTC))
                except ValueError as exc:
                    # A report that validates but makes an impossible state: refuse
                    # that one message rather than stop taking reports.
                    self._reject(message.topic, f"cannot apply: {exc}")
                    continue
                accepted += 1
        return accepted

    def _reject(self, topic: str, reason: str) -> None:
        self.rejected += 1
        shown = topic if len(topic) <= 200 else topic[:200] + "..."
        log.warning("rejected node message", topic=shown, reason=reason)
