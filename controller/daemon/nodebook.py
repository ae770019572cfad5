"""Node states: in memory for speed, in the database for truth, changed only by `transition`."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from controller.config.models import Config
from controller.core.log import get_logger
from controller.daemon.db import Database, Tx
from controller.daemon.emit import Emitter
from controller.daemon.mqtt import Message
from controller.events.liveness import HeldWill, WillGate
from controller.events.node_events import NodeState
from controller.events.node_inputs import (
    Activation,
    LiveEdit,
    NodeInput,
    Offline,
    Policy,
    report_input,
)
from controller.events.node_messages import (
    NodeCommand,
    NodeMessageError,
    NodeReport,
    parse_node_message,
)
from controller.events.nodes import Effect, PublishState, transition

REJECT_LOG_BURST = 20  # rejected-message lines logged per window
REJECT_LOG_WINDOW_S = 60.0

log = get_logger("nodes")


class NodeCapReached(ValueError):
    """A new node would exceed max_nodes."""


class UnknownVersion(ValueError):
    """A report names a label or version the store does not have."""


class NodeBook:
    """Applies node inputs: new state and its events in one transaction."""

    def __init__(
        self,
        db: Database,
        emitter: Emitter,
        config: Config,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.emitter = emitter
        self.config = config
        self.clock = clock
        self.nodes: dict[str, NodeState] = {n.mac: n for n in db.nodes()}
        self.active: dict[str, str | None] = {k: r.active for k, r in db.labels().items()}
        self.rejected = 0
        self.accepted = 0  # node messages applied since the daemon started (/metrics rates it)
        self.refused_at_cap = 0  # reports of new nodes refused because max_nodes was reached
        self.gate = WillGate(grace=config.resync_grace)
        # The last_seen each node's retained state carries (the database's, at start).
        self.published_seen: dict[str, datetime | None] = {
            mac: n.last_seen for mac, n in self.nodes.items()
        }
        # Nodes whose state or published state changed since the liveness scan last
        # looked (it plans their next check; daemon.liveness).
        self.touched: set[str] = set()
        self._versions: dict[str, frozenset[str]] = {}
        # Canaries of a rollout: the version their menu boots, judged instead of the active one.
        self.pinned: dict[str, str] = {}
        # Called with each applied report, in its transaction (controller.daemon.rollouts).
        self.observers: list[Callable[[Tx, NodeReport, datetime], None]] = []
        self._at_cap = False
        self._warn_window = 0.0  # start of the current rejection-logging window
        self._warned = 0  # rejections logged in it
        self._unlogged = 0  # rejections not logged since the last line

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
        known = self.nodes.get(mac)
        if known is None:
            self._admit(mac)
        self.touched.add(mac)  # also when rolled back: a second look costs nothing
        old = known or NodeState.trusted(mac=mac)  # mac: checked where the input was made
        new, effects = transition(old, event)
        if new != old:
            tx.put_node(new)  # its JSON is the retained state's data too (daemon.outbox)
            self.nodes[mac] = new
            tx.on_rollback(lambda: self._restore(mac, known))
        self._note_published(tx, mac, new, effects)
        self.emitter.node_effects(tx, mac, effects)
        return new

    def _admit(self, mac: str) -> None:
        """Refuse a new node beyond max_nodes (configured nodes are always tracked)."""
        cap = self.config.max_nodes
        if len(self.nodes) < cap or mac in self.config.nodes:
            self._at_cap = False
            return
        self.refused_at_cap += 1
        if not self._at_cap:
            # Once per time the cap is reached: a flood of made-up MACs gets one line.
            log.warning("node cap reached: reports of new nodes refused", max_nodes=cap)
            self._at_cap = True
        raise NodeCapReached(f"max_nodes ({cap}) reached")

    def _note_published(self, tx: Tx, mac: str, new: NodeState, effects: list[Effect]) -> None:
        if any(isinstance(e, PublishState) for e in effects):
            before = self.published_seen.get(mac)
            self.published_seen[mac] = new.last_seen
            tx.on_rollback(lambda: self.published_seen.__setitem__(mac, before))

    def _restore(self, mac: str, state: NodeState | None) -> None:
        if state is None:
            self.nodes.pop(mac, None)
        else:
            self.nodes[mac] = state

    def version_exists(self, label: str, version: str) -> bool:
        """True if the store has (or had, until recently) this version of the label."""
        known = self._versions.get(label)
        if known is None or version not in known:
            # A miss reads again: the version may have been built since.
            known = frozenset(self.db.versions(label))
            self._versions[label] = known
        return version in known

    def forget(self, tx: Tx, mac: str) -> None:
        """Stop tracking a node: its row and its retained state go."""
        before = self.nodes.pop(mac, None)
        if before is None:
            return
        self.touched.add(mac)
        seen = self.published_seen.pop(mac, None)
        tx.delete_node(mac)
        # An empty retained message deletes the retained state at the broker.
        tx.emit(self.emitter.topics.node_state(mac), b"", retain=True)

        def undo() -> None:
            self.nodes[mac] = before
            self.published_seen[mac] = seen

        tx.on_rollback(undo)

    def republish(self, tx: Tx, mac: str) -> None:
        """Publish the node's retained state again (its last_seen moved on)."""
        state = self.nodes[mac]
        before = self.published_seen.get(mac)
        self.touched.add(mac)
        self.emitter.node_state(tx, state)
        self.published_seen[mac] = state.last_seen
        tx.on_rollback(lambda: self.published_seen.__setitem__(mac, before))

    def ask_report(self, tx: Tx, mac: str, reason: str) -> None:
        """Send the node the `report` command (it answers with its boot report)."""
        state = self.nodes.get(mac)
        command = NodeCommand(
            command="report",
            id=str(uuid.uuid4()),
            boot_id=state.boot_id if state else None,
            version=self.active.get(state.label) if state and state.label else None,
            reason=reason,
        )
        tx.emit(self.emitter.topics.node_cmd(mac), command.model_dump_json().encode())

    def offline(self, tx: Tx, will: HeldWill) -> NodeState | None:
        """A will the gate believes: the node is lost (unless it spoke since)."""
        if will.mac not in self.nodes:
            return None
        return self.apply(
            tx, will.mac, Offline(at=will.at, boot_id=will.boot_id, reason=will.reason)
        )

    def report(self, tx: Tx, report: NodeReport, at: datetime) -> NodeState:
        """A validated agent report; a will (offline) is held by the gate, not applied."""
        if report.kind == "offline":
            known = self.nodes.get(report.mac)
            if known is None:
                return NodeState(mac=report.mac)  # nothing to lose; no node made from a will
            reason = "agent went offline"
            self.gate.offline(HeldWill(report.mac, report.boot_id, reason, self.clock(), at))
            return known
        label, version = report.label, report.version
        if label is not None and version is not None and not self.version_exists(label, version):
            raise UnknownVersion(
                f"label {report.label!r} has no version {report.version!r} in the store"
            )
        self.gate.spoke(report.mac)
        event = report_input(
            report,
            at=at,
            active_version=self.expected(report.mac, report.label),
            policy=self.policy(report.label),
        )
        new = self.apply(tx, report.mac, event)
        for observer in self.observers:
            observer(tx, report, at)
        return new

    def expected(self, mac: str, label: str | None) -> str | None:
        """The version the node should run: its canary pin, else the label's active one."""
        if label is None:
            return None
        pinned = self.pinned.get(mac)
        return pinned if pinned is not None else self.active.get(label)

    def pin(self, tx: Tx, label: str, version: str, macs: Sequence[str], at: datetime) -> None:
        """Canaries of a rollout should run version: judged (stale, reboot) against it."""
        event = Activation(at=at, label=label, version=version, policy=self.policy(label))
        for mac in macs:
            before = self.pinned.get(mac)
            self.pinned[mac] = version
            tx.on_rollback(lambda m=mac, b=before: self._set_pin(m, b))  # type: ignore[misc]
            if mac in self.nodes:
                self.apply(tx, mac, event)

    def unpin(self, tx: Tx, label: str, macs: Sequence[str], at: datetime) -> None:
        """Canaries follow the label's active version again (those on another one go stale)."""
        for mac in macs:
            before = self.pinned.pop(mac, None)
            tx.on_rollback(lambda m=mac, b=before: self._set_pin(m, b))  # type: ignore[misc]
            active = self.active.get(label)
            state = self.nodes.get(mac)
            if active is not None and state is not None and state.label == label:
                event = Activation(at=at, label=label, version=active, policy=self.policy(label))
                self.apply(tx, mac, event)

    def _set_pin(self, mac: str, version: str | None) -> None:
        if version is None:
            self.pinned.pop(mac, None)
        else:
            self.pinned[mac] = version

    def activation(self, tx: Tx, label: str, version: str, at: datetime) -> None:
        """A version of the label became active: its running nodes are judged again."""
        self.set_active(tx, label, version)
        event = Activation(at=at, label=label, version=version, policy=self.policy(label))
        for mac, state in sorted(self.nodes.items()):
            if state.label == label and mac not in self.pinned:  # a canary follows its pin
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
                except NodeCapReached:
                    self.rejected += 1  # logged once when the cap was reached
                    continue
                except ValueError as exc:
                    # A report that validates but makes an impossible state: refuse
                    # that one message rather than stop taking reports.
                    self._reject(message.topic, f"cannot apply: {exc}")
                    continue
                accepted += 1
        self.accepted += accepted
        return accepted

    def _reject(self, topic: str, reason: str) -> None:
        self.rejected += 1
        # A flood of bad messages must not become a flood of log lines: at most
        # REJECT_LOG_BURST lines a minute, then one line counting the rest.
        now = self.clock()
        if now - self._warn_window >= REJECT_LOG_WINDOW_S:
            if self._unlogged:
                log.warning("rejected node messages not logged", count=self._unlogged,
                            total=self.rejected)  # fmt: skip
            self._warn_window, self._warned, self._unlogged = now, 0, 0
        if self._warned >= REJECT_LOG_BURST:
            self._unlogged += 1
            return
        self._warned += 1
        shown = topic if len(topic) <= 200 else topic[:200] + "..."
        log.warning("rejected node message", topic=shown, reason=reason)
