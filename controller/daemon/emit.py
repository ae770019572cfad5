"""Turn payload models and node effects into outbox rows of the current transaction."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime

from controller import __version__
from controller.db import Tx
from controller.events import (
    ControllerStatus,
    ImageEventData,
    ImageState,
    NodeState,
    Payload,
    Topics,
    envelope_json,
)
from controller.log import get_logger
from controller.mqtt import Message
from controller.nodes import Effect, PublishEvent, PublishState, SendCommand

log = get_logger("events")


def default_source() -> str:
    """The CloudEvents source of this controller."""
    return f"netroot://{socket.gethostname()}"


class Emitter:
    """Every event the daemon publishes goes through here (and into the log)."""

    def __init__(self, topics: Topics, source: str | None = None) -> None:
        self.topics = topics
        self.source = source or default_source()
        # A concrete logger, bound once: the lazy module logger rebinds on every
        # call, which a boot storm of node events would pay thousands of times.
        self._node_log = log.bind()

    def _envelope(self, data: Payload, subject: str | None) -> bytes:
        return envelope_json(data, subject, self.source, now=datetime.now(UTC))

    def image(self, tx: Tx, data: ImageEventData) -> None:
        """An image event of the label (build.*, activated, rolled_back, pruned)."""
        tx.emit(self.topics.image_events(data.label), self._envelope(data, data.label))
        log.info("event", type=data.event_type, subject=data.label, **_brief(data))

    def image_state(self, tx: Tx, data: ImageState) -> None:
        """The label's retained state."""
        tx.emit(self.topics.image_state(data.label), self._envelope(data, data.label), retain=True)

    def controller(self, tx: Tx, data: Payload) -> None:
        """An event about the controller itself."""
        tx.emit(self.topics.controller_events(), self._envelope(data, None))
        log.info("event", type=data.event_type, **_brief(data))

    def node_effects(self, tx: Tx, mac: str, effects: list[Effect]) -> None:
        """Events, retained state and commands the state machine asked for, in its order."""
        for effect in effects:
            match effect:
                case PublishEvent(data):
                    tx.emit(self.topics.node_events(data.mac), self._envelope(data, data.mac))
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
        """A node's retained state."""
        tx.emit(self.topics.node_state(state.mac), self._envelope(state, state.mac), retain=True)

    def status(self, status: str) -> Message:
        """The retained controller status (online, or offline for the will and the goodbye)."""
        data = ControllerStatus(
            status="online" if status == "online" else "offline",
            netroot_version=__version__,
            since=datetime.now(UTC),
        )
        return Message(self.topics.controller_status(), self._envelope(data, None), 1, True)


def _brief(data: Payload) -> dict[str, object]:
    """The fields worth a log line (not the log tail of a failed build)."""
    fields = data.model_dump(mode="json", exclude={"log_tail", "paths", "label"})
    return {k: v for k, v in fields.items() if v not in (None, "", ())}
