"""BrokerLink's receive path: paho's callback puts our Message straight into the inbox, and
paho reads the socket through a read-ahead buffer."""

from __future__ import annotations

import asyncio
import socket

import paho.mqtt.client as paho
import pytest

from controller.config.models import MqttConfig
from controller.daemon.mqtt import BrokerLink, Message, ReadAhead, Receipt


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


def test_read_ahead_serves_paho_s_small_reads_from_one_socket_read() -> None:
    # paho asks for 1 byte (type), 1 byte (length), then the rest: one recv here.
    ours, broker = socket.socketpair()
    with ours, broker:
        ours.setblocking(False)
        ahead = ReadAhead(ours)
        broker.sendall(b"\x30\x05hello\x30\x03abc")
        assert [ahead.recv(1), ahead.recv(1), ahead.recv(5)] == [b"\x30", b"\x05", b"hello"]
        assert ahead.pending() == 5  # aiomqtt's callback reads on while this is above 0
        assert [ahead.recv(1), ahead.recv(1), ahead.recv(100)] == [b"\x30", b"\x03", b"abc"]
        assert ahead.pending() == 0
        with pytest.raises(BlockingIOError):  # nothing buffered, nothing sent: as the socket
            ahead.recv(1)
        broker.sendall(b"\x40")
        assert ahead.recv(4) == b"\x40"  # a short read is handed over as it came
        assert ahead.fileno() == ours.fileno()  # the event loop watches the real socket
        broker.shutdown(socket.SHUT_WR)
        assert ahead.recv(1) == b""  # the broker closed: paho sees the end as before
