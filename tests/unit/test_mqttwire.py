"""mqttwire: plain_publish reads a PUBLISH as paho's own decoder does (or leaves it to paho),
ReadAhead serves paho's small reads from one socket read."""

from __future__ import annotations

import socket

import paho.mqtt.client as paho_client
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt._packet import decode_publish
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.daemon.mqtt import _read_publishes_here
from controller.daemon.mqttwire import ReadAhead, plain_publish, puback, split_publishes

PUBLISH = 0x30


def properties(**values: object) -> bytes:
    """The properties part of a PUBLISH (its length first), packed by paho."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    return bytes(props.pack())  # type: ignore[no-untyped-call]


def publish(topic: bytes, payload: bytes, qos: int, mid: int = 0, props: bytes = b"\x00") -> bytes:
    """A PUBLISH's body: what follows its fixed header."""
    head = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    return head + props + payload


CASES = [
    (PUBLISH | 0x02, publish(b"netroot/node/52:54:00:12:34:56/report", b'{"kind":"boot"}', 1, 7)),
    (PUBLISH | 0x03, publish(b"netroot/state/node/x", b"", 1, 65535)),  # retained, empty
    (PUBLISH, publish(b"a/b", b"qos 0", 0)),
    (PUBLISH | 0x0A, publish(b"dup", b"again", 1, 9)),  # DUP: a redelivery
    (PUBLISH | 0x02, publish("é/ü".encode(), b"x", 1, 1)),
    (PUBLISH | 0x02, publish(b"t", b"json", 1, 2, properties(ContentType="application/json"))),
    (PUBLISH | 0x02, publish(b"t", b"p", 1, 3, properties(UserProperty=[("k", "v" * 200)]))),
]


@pytest.mark.parametrize(("command", "body"), CASES)
def test_a_plain_publish_reads_as_paho_reads_it(command: int, body: bytes) -> None:
    theirs = decode_publish(command, bytearray(body), MQTTProtocolVersion.MQTTv5)
    ours = plain_publish(command, bytearray(body))
    assert ours == (theirs.topic.decode(), bytes(theirs.payload), theirs.qos, theirs.retain,
                    theirs.mid)  # fmt: skip


@pytest.mark.parametrize(
    ("command", "body"),
    [
        (PUBLISH | 0x04, publish(b"t", b"qos 2", 2, 5)),  # QoS 2: paho keeps its state
        (PUBLISH | 0x02, publish(b"", b"by alias", 1, 5, properties(TopicAlias=1))),
        (PUBLISH | 0x02, publish(b"\xff\xfe", b"bad utf-8", 1, 5)),
        (PUBLISH | 0x02, b"\x00\x09abc"),  # topic longer than the packet
        (PUBLISH | 0x02, publish(b"t", b"", 1, 5)[:4]),  # no room for the packet id's 2nd byte
        (PUBLISH | 0x02, publish(b"t", b"", 1, 5, b"\x80\x80\x80\x80\x01")),  # length > 4 bytes
        (PUBLISH | 0x02, publish(b"t", b"", 1, 5, b"\x05\x03")),  # properties past the end
        (PUBLISH, b"\x00"),
    ],
)
def test_anything_else_is_left_to_paho(command: int, body: bytes) -> None:
    assert plain_publish(command, bytearray(body)) is None


@given(st.integers(0, 255), st.binary(max_size=64))
def test_no_bytes_make_it_raise(command: int, body: bytes) -> None:
    result = plain_publish(command, body)
    assert result is None or result[2] in (0, 1)


def test_a_puback_is_the_one_paho_sends() -> None:
    assert puback(0x1234) == b"\x40\x02\x12\x34"


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


def packet(command: int, body: bytes) -> bytes:
    """A whole packet: the fixed header (type and flags, remaining length) and body."""
    length, size = b"", len(body)
    while True:
        size, digit = size >> 7, size & 0x7F
        length += bytes([digit | (0x80 if size else 0)])
        if not size:
            return bytes([command]) + length + body


def test_split_publishes_takes_the_complete_plain_ones_and_stops_where_paho_must_read() -> None:
    first = packet(PUBLISH | 0x02, publish(b"a", b"1", 1, 1))
    second = packet(PUBLISH, publish(b"b", b"2" * 200, 0))  # a two-byte remaining length
    qos2 = packet(PUBLISH | 0x04, publish(b"c", b"3", 2, 3))
    data = first + second + qos2 + first
    assert split_publishes(data, 0) == (
        [("a", b"1", 1, False, 1), ("b", b"2" * 200, 0, False, 0)],
        len(first + second),  # the QoS 2 one is paho's, and so is all after it
    )
    assert split_publishes(data, len(first + second + qos2))[1] == len(data)
    assert split_publishes(first + second[:-1], 0)[1] == len(first)  # cut off: read on later
    assert split_publishes(first[:1], 0) == ([], 0)  # not even its length yet
    assert split_publishes(b"\xd0\x00" + first, 0) == ([], 0)  # PINGRESP: paho's


def reader() -> tuple[paho_client.Client, socket.socket, list[tuple[object, ...]]]:
    """A paho client reading through ReadAhead as the report connection does, and its broker end."""
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client = paho_client.Client(CallbackAPIVersion.VERSION2, protocol=paho_client.MQTTv5)
    delivered: list[tuple[object, ...]] = []
    client._sock = ReadAhead(ours)
    _read_publishes_here(client, lambda *message: delivered.append(message))
    client.on_message = lambda c, u, m: delivered.append(("paho", m.topic, m.payload))
    return client, broker, delivered


def read_all(client: paho_client.Client) -> None:
    """What aiomqtt's reader does on a readable socket, until nothing is left to read."""
    while True:
        client.loop_read()
        sock = client._sock
        assert isinstance(sock, ReadAhead)
        if sock.pending() == 0:
            try:
                sock.recv(1)  # one more byte? (ReadAhead buffers whatever comes with it)
            except BlockingIOError:
                return
            raise AssertionError("bytes were left unread")


@given(st.lists(st.integers(1, 400), min_size=1, max_size=30), st.binary(max_size=40))
def test_a_stream_cut_anywhere_delivers_every_message_once_in_order(
    cuts: list[int], payload: bytes
) -> None:
    messages = [(f"n/{i}/report", payload + bytes([i]), i % 2, False, i % 2 * (i + 1))
                for i in range(12)]  # fmt: skip
    packets = [
        packet(PUBLISH | qos << 1, publish(t.encode(), p, qos, mid))
        for t, p, qos, _, mid in messages
    ]
    stream = b"".join(packets[:5]) + b"\xd0\x00" + b"".join(packets[5:])  # PINGRESP: paho's
    client, broker, delivered = reader()
    with broker:
        at = 0
        for cut in [*cuts, len(stream)]:
            broker.sendall(stream[at : at + cut])
            at += cut
            read_all(client)
            if at >= len(stream):
                break
    assert delivered == messages
    client._sock.close()  # type: ignore[union-attr]


def test_the_end_of_the_connection_is_paho_s_to_see() -> None:
    client, broker, delivered = reader()
    broker.sendall(packet(PUBLISH | 0x02, publish(b"a", b"1", 1, 1)))
    broker.close()
    assert client.loop_read() == paho_client.MQTT_ERR_SUCCESS
    assert delivered == [("a", b"1", 1, False, 1)]
    assert client.loop_read() == paho_client.MQTT_ERR_CONN_LOST
