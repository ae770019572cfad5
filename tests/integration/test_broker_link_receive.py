"""BrokerLink's receive path against a real mosquitto: read-ahead, our PUBLISH decoding and
batched PUBACKs on the report link; paho's own acknowledgements on the others.

A boot storm is more reports than the broker lets wait for our acknowledgement
(mqtt.RECEIVE_MAXIMUM): every one arrives only if each batch's PUBACKs reach the
broker. A persistent session resumed after acknowledging gets nothing again; one
resumed without acknowledging gets everything again (the crash promise).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import paho.mqtt.client as paho
import pytest
from integration.harness import WAIT_S, Broker
from paho.mqtt.enums import CallbackAPIVersion

from controller.config.models import MqttConfig
from controller.daemon.mqtt import RECEIVE_MAXIMUM, BrokerLink, Message

pytestmark = pytest.mark.integration

TOPIC = "netroot/node/+/report"
COUNT = RECEIVE_MAXIMUM + 1500  # beyond the window: stalls unless acknowledgements arrive
BATCH = 1000


def publish(port: int, payloads: list[bytes], topic: str = "netroot/node/fleet/report") -> None:
    """An outside fleet: paho-mqtt, QoS 1, until the broker acknowledged every one."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-fleet")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(topic, p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(WAIT_S)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


@contextlib.asynccontextmanager
async def link(port: int) -> AsyncIterator[BrokerLink]:
    """The controller's report link: persistent session, manual acknowledgement."""
    made = BrokerLink(MqttConfig(host="127.0.0.1", port=port), client_id="test-tracker",
                      subscriptions=(TOPIC,), clean_session=False, manual_ack=True)  # fmt: skip
    task = asyncio.create_task(made.run())
    try:
        await asyncio.wait_for(made.wait_connected(), WAIT_S)
        yield made
    finally:
        # As the daemon stops: a goodbye the broker acknowledges, after the reports'
        # PUBACKs on the same connection (a bare DISCONNECT right after them can
        # leave the broker to deliver the last ones again: a duplicate, never a loss).
        await made.close(goodbye=Message("netroot/test/goodbye", b"offline", 1, True))
        await asyncio.wait_for(task, WAIT_S)


async def take(made: BrokerLink, count: int, *, ack: bool) -> list[Message]:
    """count messages from the inbox, acknowledged a batch at a time (or never)."""
    got: list[Message] = []
    while len(got) < count:
        batch = [await asyncio.wait_for(made.inbox.get(), WAIT_S)]
        while len(batch) < BATCH and not made.inbox.empty():
            batch.append(made.inbox.get_nowait())
        if ack:
            assert made.acknowledge(batch) == len(batch)
        got += batch
    return got


def test_a_burst_beyond_the_receive_window_arrives_whole_and_acknowledged(
    broker: Broker,
) -> None:
    payloads = [b'{"n": %d}' % i for i in range(COUNT)]

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        async with link(broker.port):
            pass  # the session exists at the broker: it queues while we are away
        await asyncio.to_thread(publish, broker.port, payloads)
        async with link(broker.port) as made:
            first = await take(made, COUNT, ack=True)
        async with link(broker.port) as made:
            # Anything not acknowledged would come again before this marker.
            await asyncio.to_thread(publish, broker.port, [b"marker"])
            again = await take(made, 1, ack=True)
        return [m.payload for m in first], [m.payload for m in again]

    first, again = asyncio.run(scenario())
    assert first == payloads  # all of them, in order, each once
    assert again == [b"marker"]


def test_reports_not_acknowledged_come_again_on_the_next_connection(broker: Broker) -> None:
    payloads = [b'{"n": %d}' % i for i in range(50)]

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        async with link(broker.port):
            pass
        await asyncio.to_thread(publish, broker.port, payloads)
        async with link(broker.port) as made:
            first = await take(made, len(payloads), ack=False)  # as if it crashed now
        async with link(broker.port) as made:
            again = await take(made, len(payloads), ack=True)
        return [m.payload for m in first], [m.payload for m in again]

    first, again = asyncio.run(scenario())
    assert first == again == payloads


def test_a_link_without_manual_acknowledgement_gets_every_message(broker: Broker) -> None:
    # paho acknowledges on such a link (the replication links, `netroot events`): the
    # broker lets at most 20 QoS 1 messages wait for an acknowledgement.
    payloads = [b'{"n": %d}' % i for i in range(200)]

    async def scenario() -> list[bytes]:
        config = MqttConfig(host="127.0.0.1", port=broker.port)
        made = BrokerLink(config, client_id="test-follower", subscriptions=(TOPIC,))
        task = asyncio.create_task(made.run())
        try:
            await asyncio.wait_for(made.wait_connected(), WAIT_S)
            await asyncio.to_thread(publish, broker.port, payloads)
            got = [await asyncio.wait_for(made.inbox.get(), WAIT_S) for _ in payloads]
        finally:
            await made.close()
            await asyncio.wait_for(task, WAIT_S)
        return [m.payload for m in got]

    assert asyncio.run(scenario()) == payloads
