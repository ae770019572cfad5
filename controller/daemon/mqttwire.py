"""MQTT bytes on the controller's report connection, where paho is slow for a boot storm.

paho keeps the protocol (connecting, keepalive, subscriptions, the publisher's
acknowledgements); this reads what a storm of node reports makes many of:
- `ReadAhead`: the socket, read in large pieces (paho reads each packet in
  three or more system calls, and aiomqtt turns the event loop once a packet);
- `split_publishes`: the plain PUBLISH packets complete in what was read, in one
  loop (paho's reader costs a dozen calls and a dict rebuilt per packet: 15 % of
  the controller's CPU in a storm, by py-spy);
- `plain_publish`: a QoS 0 or 1 PUBLISH without a topic alias, decoded in a
  few slices (paho builds a Properties object and an MQTTMessage for each);
- `puback`: the acknowledgement paho.ack would send, so a batch's go out in
  one write.
Anything else (QoS 2, a topic alias, bad UTF-8, a malformed packet) is left to paho.
"""

from __future__ import annotations

import struct
from typing import Any, Final

PUBACK: Final = 0x40  # MQTT control packet type 4, no flags
_PUBACK = struct.Struct("!BBH")  # type, remaining length 2, packet id: success, no properties
READ_AHEAD: Final = 256 * 1024  # bytes asked of the kernel at once: hundreds of node reports


def puback(mid: int) -> bytes:
    """The PUBACK of a received QoS 1 message, as paho.ack sends it."""
    return _PUBACK.pack(PUBACK, 2, mid)


# What plain_publish reads: topic, payload, QoS, retain, packet id (0 at QoS 0).
Publish = tuple[str, bytes, int, bool, int]


def plain_publish(command: int, body: bytes | bytearray) -> Publish | None:
    """The message of an MQTT 5 PUBLISH of QoS 0 or 1 that names its topic.

    command is the packet's first byte, body what follows its fixed header.
    None for anything else: paho reads it (and refuses what is malformed).
    Properties are skipped: a node report needs none.
    """
    qos = (command >> 1) & 0x03
    if qos > 1 or len(body) < 2:
        return None
    end = 2 + ((body[0] << 8) | body[1])
    if end == 2 or end + 2 * qos > len(body):
        return None  # an empty topic names a topic alias
    try:
        topic = body[2:end].decode()
    except UnicodeDecodeError:
        return None
    mid = (body[end] << 8) | body[end + 1] if qos else 0
    skipped = _skip_properties(body, end + 2 * qos)
    if skipped is None:
        return None
    return topic, bytes(body[skipped:]), qos, bool(command & 0x01), mid


def split_publishes(data: bytes, at: int) -> tuple[list[Publish], int]:
    """The plain PUBLISH packets lying complete in data from at, and where the rest starts.

    Stops at the first packet that is cut off, is not a PUBLISH, or that
    plain_publish leaves to paho: paho reads that one (and refuses what is
    malformed), and reading here goes on after it.
    """
    taken: list[Publish] = []
    end = len(data)
    while at < end and data[at] >> 4 == 3:  # MQTT control packet type 3: PUBLISH
        length, start = _variable_int(data, at + 1)
        if length is None or start + length > end:
            break
        plain = plain_publish(data[at], data[start : start + length])
        if plain is None:
            break
        taken.append(plain)
        at = start + length
    return taken, at


def _variable_int(data: bytes | bytearray, at: int) -> tuple[int | None, int]:
    """A variable byte integer (a remaining length, a properties length) and where
    what it measures starts; None if the bytes stop first or it runs past 4 bytes."""
    value = 0
    for shift in (0, 7, 14, 21):
        if at >= len(data):
            return None, at
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
    return None, at


def _skip_properties(body: bytes | bytearray, at: int) -> int | None:
    """Where the payload starts: after the properties' length and the properties;
    None if that is past the end."""
    length, at = _variable_int(body, at)
    return at + length if length is not None and at + length <= len(body) else None


class ReadAhead:
    """The broker socket as paho reads it, with reads served from a buffer.

    paho reads each packet in three or more recv calls (its type byte, each byte
    of its length, then the rest), and aiomqtt runs one event-loop callback per
    packet: in a boot storm, more system calls and loop turns than reports. Here
    one recv takes whatever the kernel has, and `pending()` (which aiomqtt asks
    of TLS sockets) tells its callback to go on reading packets from the buffer
    before it returns. Everything else is the socket's own.
    """

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = b""
        self._at = 0

    def recv(self, size: int) -> bytes:
        """Up to size bytes: from the buffer, else one read of the socket (raising as it does)."""
        if self._at >= len(self._buffer):
            data: bytes = self._sock.recv(max(size, READ_AHEAD))
            if len(data) <= size:
                return data
            self._buffer, self._at = data, 0
        start, self._at = self._at, self._at + size
        return self._buffer[start : self._at]

    def publishes(self) -> list[Publish]:
        """The plain PUBLISH packets complete in the buffer, taken from it (see split_publishes).

        An empty buffer is filled by one read of the socket first (raising as the
        socket does; b"" from a closed one leaves nothing taken).
        """
        if self._at >= len(self._buffer):
            self._buffer, self._at = self._sock.recv(READ_AHEAD), 0
        taken, self._at = split_publishes(self._buffer, self._at)
        return taken

    def pending(self) -> int:
        """Bytes read from the socket and not yet taken (and what TLS holds decrypted)."""
        inner = getattr(self._sock, "pending", None)
        held = max(len(self._buffer) - self._at, 0)
        return held + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:  # send, fileno, close...: the socket's
        return getattr(self._sock, name)
