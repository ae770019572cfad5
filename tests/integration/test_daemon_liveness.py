"""Node liveness through a real broker and the real daemon: a broker restart fires every
agent's will, yet no live node ends lost (the controller asks it to report); a node that
falls silent becomes lost after heartbeat_timeout; last_seen is republished."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from integration.harness import (
    BOOT_ID,
    Broker,
    Collector,
    Controller,
    agent_report,
    report,
    wait_for,
)
from integration.test_daemon_nodes import retained_state
from paho.mqtt.enums import CallbackAPIVersion
from support import Workspace, make_root_tree

pytestmark = pytest.mark.integration

A = "52:54:00:00:04:0a"
B = "52:54:00:00:04:0b"


class PahoAgent:
    """Like the node agent: a will, a persistent cmd subscription, answers `report`.

    It sends no heartbeats and does not re-report on reconnect by itself: only
    the controller's `report` command can tell the controller it is still there.
    """

    def __init__(self, broker: Broker, mac: str, version: str) -> None:
        self.mac, self.version = mac, version
        self.commands: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"agent-{mac.replace(':', '')}",
            clean_session=False,  # the broker keeps commands for it across its restart
        )
        will = {"kind": "offline", "mac": mac, "boot_id": BOOT_ID}
        self.client.will_set(f"netroot/node/{mac}/report", json.dumps(will), qos=1)
        # paho annotates the delays int, yet does float arithmetic with them: 0.2 s is meant
        self.client.reconnect_delay_set(0.2, 1)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port, keepalive=5)
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, *args: Any) -> None:
        client.subscribe(f"netroot/node/{self.mac}/cmd", qos=1)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        command = json.loads(msg.payload)
        with self.lock:
            self.commands.append(command)
        if command["command"] == "report" and command.get("boot_id") in (None, BOOT_ID):
            self.boot_report()

    def boot_report(self) -> None:
        body = json.dumps(report(self.mac, version=self.version))
        self.client.publish(f"netroot/node/{self.mac}/report", body, qos=1)

    def received(self, command: str) -> list[dict[str, Any]]:
        with self.lock:
            return [c for c in self.commands if c["command"] == command]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Lab:
    def __init__(self, tmp_path: Path, broker: Broker, liveness: str) -> None:
        self.ws = Workspace(tmp_path, extra_config=liveness + broker.mqtt_config())
        make_root_tree(self.ws.tree)
        self.ws.write()
        self.ws.run("build", "demo", "--activate")
        self.broker = broker
        self.collector = Collector(broker.port)
        self.controller = Controller(self.ws).start()

    def node(self, mac: str) -> dict[str, Any]:
        return next(n for n in self.ws.json("nodes") if n["mac"] == mac)

    def lost(self, mac: str) -> list[dict[str, Any]]:
        return [e for e in self.collector.events("node.lost") if e["data"]["mac"] == mac]

    def close(self) -> None:
        self.controller.cleanup()
        self.collector.close()


@pytest.fixture
def lab(tmp_path: Path, broker: Broker, request: pytest.FixtureRequest) -> Iterator[Lab]:
    made = Lab(tmp_path, broker, request.param)
    yield made
    made.close()


RESTART = "heartbeat_timeout = 600\nresync_grace = 20\n"
# A heartbeats every poll of the test (50 ms); the timeout leaves a loaded machine
# (a slow mosquitto_pub, a busy daemon) seconds of slack before A could look silent.
SILENCE = "heartbeat_interval = 1\nheartbeat_timeout = 8\nlast_seen_refresh = 1\n"


@pytest.mark.parametrize("lab", [RESTART], indirect=True)
def test_a_broker_restart_leaves_no_live_node_lost(lab: Lab) -> None:
    version = lab.ws.active()
    assert version is not None
    agent = PahoAgent(lab.broker, A, version)
    try:
        agent.boot_report()
        lab.collector.wait_event("node.current", mac=A)
        seen_before = lab.node(A)["last_seen"]

        # mosquitto fires the agent's will as it shuts down, and the controller
        # receives it just before its own connection drops.
        lab.broker.stop()
        lab.broker.start()

        (asked,) = wait_for(lambda: agent.received("report"), "the report command")
        assert asked["boot_id"] == BOOT_ID
        wait_for(lambda: lab.node(A)["last_seen"] > seen_before, "the answer applied")
        wills = [
            m
            for m in lab.collector.all()
            if m.topic == f"netroot/node/{A}/report" and m.json()["kind"] == "offline"
        ]
        assert wills, "the broker fired no will: the test would prove nothing"
        assert lab.node(A)["state"] == "up"
        assert lab.lost(A) == []
        # The will was held, not dropped: a node that does not answer is lost after the grace.
        agent.client.loop_stop()  # alive for the broker no more, and deaf to commands
        agent.client._sock_close()  # an abrupt death: the broker fires the will
        (event,) = wait_for(lambda: lab.lost(A), "node.lost after the agent died")
        assert event["data"]["reason"] == "agent went offline"
        assert lab.controller.alive()
    finally:
        agent.close()


@pytest.mark.parametrize("lab", [SILENCE], indirect=True)
def test_a_silent_node_becomes_lost_and_last_seen_is_republished(lab: Lab) -> None:
    version = lab.ws.active()
    agent_report(lab.broker, A, version=version)
    agent_report(lab.broker, B, version=version)
    lab.collector.wait_event("node.current", count=2)
    first = retained_state(lab.broker, A)["data"]["last_seen"]

    def a_heartbeats_until_b_is_lost() -> list[dict[str, Any]]:
        agent_report(lab.broker, A, "heartbeat", version=version)
        return lab.lost(B)

    (event,) = wait_for(a_heartbeats_until_b_is_lost, "B lost by silence")
    assert "heartbeat_timeout" in event["data"]["reason"]
    assert lab.node(B)["state"] == "lost"
    assert lab.node(A)["state"] == "up"
    assert lab.lost(A) == []

    def republished() -> bool:
        agent_report(lab.broker, A, "heartbeat", version=version)
        later = retained_state(lab.broker, A)["data"]["last_seen"]
        return datetime.fromisoformat(later) > datetime.fromisoformat(first)

    wait_for(republished, "a newer last_seen in the retained state")
    # A goes silent too: lost, with the reason.
    (silent,) = wait_for(lambda: lab.lost(A), "A lost by silence")
    assert "silent for more than 8 s" in silent["data"]["reason"]
