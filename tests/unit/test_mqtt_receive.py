"""BrokerLink's receive path: paho's callback puts our Message straight into the inbox."""

from __future__ import annotations

import asyncio

import paho.mqtt.client as paho

from controller.config.models import MqttConfig
from controller.daemon.mqtt import BrokerLink, Message, Receipt


def delivered(topic: bytes, payload: bytes, mid: int, qos: int) -> paho.MQTTMessage:
    message = paho.MQTTMessage(mid=mid, topic=topic)
    message.payload = payload
    message.qos = qos
    return message


def test_a_message_delivered_while_connecting_reaches_the_inbox_with_its_receipt() -> None:
    # A persistent session's messages may arrive before the subscriptions are
    # made: the callback is set when the client is made, and names the
    # connection that client's session will have.
    async def receive() -> list[Message]:
        link = BrokerLink(MqttConfig(), client_id="t", manual_ack=True)
        client = link._make_client()
        inner = client._client
        on_message = inner.on_message
        assert on_message is not None
        on_message(inner, None, delivered(b"netroot/node/a/report", b"{}", 7, 1))
        on_message(inner, None, delivered(b"netroot/node/b/report", b"x", 0, 0))
        return [link.inbox.get_nowait() for _ in range(link.inbox.qsize())]

    first, second = asyncio.run(receive())
    assert first == Message("netroot/node/a/report", b"{}", 1, False)
    assert first.receipt == Receipt(connection=1, mid=7, qos=1)
    assert second.payload == b"x"
    assert second.receipt is None  # QoS 0: nothing to acknowledge
