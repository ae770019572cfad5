"""The publisher against a real mosquitto, read by a paho subscriber: of retained states
that wait in the outbox for the same topic only the newest is sent; every event is sent,
in order; late joiners get the newest state."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from integration.harness import WAIT_S, Broker, Collector, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from controller.config.load import parse_config
from controller.daemon.db import Database
from controller.daemon.emit import Emitter
from controller.daemon.mqtt import BrokerLink
from controller.daemon.publisher import Publisher
from controller.events.topics import Topics

pytestmark = pytest.mark.integration

NODES = 40
ROUNDS = 3  # states per node waiting in the outbox (each superseding the one before)


def state_topic(i: int) -> str:
    return f"netroot/state/node/52:54:00:00:00:{i:02x}"


def event_topic(i: int) -> str:
    return f"netroot/events/node/52:54:00:00:00:{i:02x}"


def fill_outbox(db: Database) -> None:
    """Per node and round: an event, then the retained state it led to (as ingest emits)."""
    with db.transaction() as tx:
        for r in range(ROUNDS):
            for i in range(NODES):
                tx.emit(event_topic(i), json.dumps({"node": i, "round": r}).encode())
                body = json.dumps({"node": i, "round": r}).encode()
                tx.emit(state_topic(i), body, retain=True)


async def publish_outbox(db: Database, port: int, tmp_path: Path) -> Publisher:
    config = parse_config(
        {"mqtt": {"host": "127.0.0.1", "port": port}}, source="test", root=tmp_path
    )
    link = BrokerLink(config.mqtt, client_id="test-publisher")
    publisher = Publisher(db, link, Emitter(Topics()))
    async with asyncio.timeout(WAIT_S), asyncio.TaskGroup() as tasks:
        running = tasks.create_task(link.run())
        await link.wait_connected()
        await publisher.flush()  # window after window while connected, until the outbox is empty
        await link.close()
        running.cancel()
    return publisher


def retained(port: int, topics: list[str]) -> dict[str, bytes]:
    """What a subscriber that joins now gets (the retained message of each topic)."""
    got: dict[str, bytes] = {}
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-late-joiner")
    client.on_message = lambda c, u, m: got.__setitem__(m.topic, bytes(m.payload))
    client.connect("127.0.0.1", port)
    client.subscribe("netroot/state/#", qos=1)
    client.loop_start()
    try:
        wait_for(lambda: set(got) >= set(topics), "the retained states")
    finally:
        client.disconnect()
        client.loop_stop()
    return got


def test_only_the_newest_waiting_state_is_sent_and_every_event(
    broker: Broker, tmp_path: Path
) -> None:
    db = Database(tmp_path / "netroot.db")
    fill_outbox(db)
    collector = Collector(broker.port, topics=("netroot/#",))
    try:
        publisher = asyncio.run(publish_outbox(db, broker.port, tmp_path))
        events = NODES * ROUNDS

        def all_arrived() -> bool:
            got = collector.all()
            return (
                sum(m.topic.startswith("netroot/events/") for m in got) >= events
                and sum(m.topic.startswith("netroot/state/") for m in got) >= NODES
            )

        # One connection keeps its order: a superseded state, had it been sent,
        # would have arrived before the newest one.
        wait_for(all_arrived, "every event and the newest states")
        got = collector.all()
    finally:
        collector.close()
    for i in range(NODES):
        states = [json.loads(m.payload) for m in got if m.topic == state_topic(i)]
        assert states == [{"node": i, "round": ROUNDS - 1}]
        node_events = [json.loads(m.payload) for m in got if m.topic == event_topic(i)]
        assert node_events == [{"node": i, "round": r} for r in range(ROUNDS)]  # each, in order
    assert publisher.coalesced == NODES * (ROUNDS - 1)
    assert db.outbox_pending == 0
    late = retained(broker.port, [state_topic(i) for i in range(NODES)])
    assert json.loads(late[state_topic(0)]) == {"node": 0, "round": ROUNDS - 1}
