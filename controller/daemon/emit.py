"""Turn payload models and node effects into outbox rows of the current transaction."""

from __future__ import annotations

import socket
import urllib.parse
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from controller import __version__
from controller.config.models import Config
from controller.core.log import get_logger
from controller.daemon.db import Tx
from controller.daemon.mqtt import Message
from controller.daemon.outbox import OutboxRow
from controller.events.envelope import CONTENT_TYPE, envelope_json, wrap_json
from controller.events.node_events import NodeState
from controller.events.node_messages import COMMAND_EXPIRY_S
from controller.events.nodes import Effect, PublishEvent, PublishState, SendCommand
from controller.events.payloads import (
    ControllerStatus,
    ImageEventData,
    ImageState,
    Payload,
    ReplicaEventData,
    ReplicaState,
    StateIndex,
)
from controller.events.topics import Topics

log = get_logger("events")


def default_source() -> str:
    """The CloudEvents source of this controller (a URI: odd host names are quoted)."""
    return f"netroot://{urllib.parse.quote(socket.gethostname(), safe='-.')}"


def event_source(config: Config) -> str:
    """This server's CloudEvents source: its [replication] name when one is set (two boot
    servers on one broker must not look alike), else its host name."""
    if "name" in config.replication.model_fields_set:
        return f"netroot://{config.replication.name}"
    return default_source()


@dataclass(frozen=True, slots=True)
class Health:
    """What the retained controller status says about the controller's work."""

    started_at: datetime
    connections: int
    outbox_pending: int
    outbox_dropped: int
    queued_builds: int
    running_builds: tuple[str, ...]
    heartbeat_s: float


class Emitter:
    """Every event the daemon publishes goes through here (and into the log)."""

    def __init__(self, topics: Topics, source: str | None = None) -> None:
        self.topics = topics
        self.source = source or default_source()
        # A concrete logger, bound once: the lazy module logger rebinds on every
        # call, which a boot storm of node events would pay thousands of times.
        self._node_log = log.bind()

    def _envelope(
        self,
        data: Payload,
        subject: str | None,
        at: datetime | None = None,
        data_json: str | None = None,
    ) -> bytes:
        return envelope_json(
            data, subject, self.source, now=at or datetime.now(UTC), data_json=data_json
        )

    def _event(
        self,
        tx: Tx,
        topic: str,
        data: Payload,
        subject: str | None,
        *,
        label: str | None,
        at: datetime | None = None,
    ) -> None:
        """An event: to the outbox, and to the journal in the same transaction."""
        when = at or datetime.now(UTC)
        envelope = envelope_json(data, subject, self.source, now=when)
        tx.emit_event(
            topic, envelope, at=when, event_type=data.event_type, subject=subject, label=label
        )

    def image(self, tx: Tx, data: ImageEventData, at: datetime | None = None) -> None:
        """An image event of the label (build.*, activated, rolled_back, pruned).

        `at` is when it happened, when that was earlier than now (a history line).
        """
        self._event(
            tx, self.topics.image_events(data.label), data, data.label, label=data.label, at=at
        )
        log.info("event", type=data.event_type, subject=data.label, **_brief(data))

    def replica(self, tx: Tx, data: ReplicaEventData) -> None:
        """A replica's event about a version it copies, on its own topic."""
        topic = self.topics.replica_events(data.replica)
        self._event(tx, topic, data, data.label, label=data.label)
        log.info("event", type=data.event_type, subject=data.label, **_brief(data))

    def replica_state(self, tx: Tx, data: ReplicaState) -> None:
        """The replica's retained state."""
        topic = self.topics.replica_state(data.replica)
        tx.emit(topic, self._envelope(data, data.replica), retain=True)

    def index(self, tx: Tx, data: StateIndex) -> None:
        """The retained index of labels and node counts."""
        tx.emit(self.topics.state_index(), self._envelope(data, None), retain=True)

    def image_state(self, tx: Tx, data: ImageState) -> None:
        """The label's retained state."""
        tx.emit(self.topics.image_state(data.label), self._envelope(data, data.label), retain=True)

    def controller(self, tx: Tx, data: Payload) -> None:
        """An event about the controller itself."""
        self._event(tx, self.topics.controller_events(), data, None, label=None)
        log.info("event", type=data.event_type, **_brief(data))

    def node_effects(self, tx: Tx, mac: str, effects: list[Effect]) -> None:
        """Events, retained state and commands the state machine asked for, in its order."""
        for effect in effects:
            match effect:
                case PublishEvent(data):
                    topic = self.topics.node_events(data.mac)
                    self._event(tx, topic, data, data.mac, label=data.label)
                    # Debug: a boot storm of thousands of nodes must not flood the journal.
                    self._node_log.debug(
                        "event", type=data.event_type, subject=data.mac, state=data.state
                    )
                case PublishState(state):
                    self.node_state(tx, state)
                case SendCommand():
                    command = effect.message(str(uuid.uuid4()))
                    tx.emit(self.topics.node_cmd(mac), command.model_dump_json().encode())
                    log.info("command", node=mac, command=command.command, id=command.id)

    def node_state(self, tx: Tx, state: NodeState) -> None:
        """A node's retained state: wrapped from its stored row when sent (daemon.outbox)."""
        tx.emit_node_state(self.topics.node_state(state.mac), state.mac)

    def status(
        self, status: str, *, since: datetime | None = None, health: Health | None = None
    ) -> Message:
        """The retained controller status: a new event each time (online, offline, goodbye)."""
        online = status == "online"
        h = health
        data = ControllerStatus(
            status="online" if online else "offline",
            netroot_version=__version__,
            since=since or datetime.now(UTC),
            broker_connected=online,
            started_at=h.started_at if h else None,
            connections=h.connections if h else None,
            outbox_pending=h.outbox_pending if h else None,
            outbox_dropped=h.outbox_dropped if h else None,
            queued_builds=h.queued_builds if h else None,
            running_builds=h.running_builds if h else (),
            heartbeat_s=h.heartbeat_s if h and online else None,
        )
        return self._status_message(data)

    def will(self) -> Message:
        """The will set at each connection: it claims nothing it cannot know."""
        data = ControllerStatus(status="offline", netroot_version=__version__, will=True)
        return self._status_message(data)

    def _status_message(self, data: ControllerStatus) -> Message:
        return Message(
            self.topics.controller_status(),
            self._envelope(data, None),
            1,
            True,
            content_type=CONTENT_TYPE,
        )

    def message(self, row: OutboxRow) -> Message:
        """An outbox row as published: envelopes typed, commands expiring, node states made
        from their stored row (the caller leaves out rows whose node was forgotten)."""
        if row.node is not None and row.node_data is not None:
            envelope = wrap_json(
                NodeState, row.node_data, row.node, self.source, now=datetime.now(UTC)
            )
            return Message(row.topic, envelope, row.qos, row.retain, CONTENT_TYPE)
        if row.topic.startswith(f"{self.topics.prefix}/node/") and row.topic.endswith("/cmd"):
            # A command for a node that is away must not run when it comes back hours later.
            return Message(
                row.topic, row.payload, row.qos, row.retain, "application/json", COMMAND_EXPIRY_S
            )
        return Message(row.topic, row.payload, row.qos, row.retain, CONTENT_TYPE)


def _brief(data: Payload) -> dict[str, object]:
    """The fields worth a log line (not the log tail of a failed build)."""
    fields = data.model_dump(mode="json", exclude={"log_tail", "paths", "label"})
    return {k: v for k, v in fields.items() if v not in (None, "", ())}
