"""mqttwire: plain_publish reads a PUBLISH as paho's own decoder does (or leaves it to paho),
ReadAhead serves paho's small reads from one socket read."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt._packet import decode_publish
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.daemon.mqttwire import ReadAhead, plain_publish, puback

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
