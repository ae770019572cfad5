"""The broker connection: the only module that imports aiomqtt.

`BrokerLink` keeps one connection alive (reconnecting with jittered
exponential backoff), publishes batches in order and says how many the broker
acknowledged, and hands received messages to an asyncio queue. Callers deal
in `Message` values and `LinkDown`, never in aiomqtt types.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiomqtt
import paho.mqtt.client as paho_client
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from controller.config.models import MqttConfig
from controller.core.errors import NetrootError
from controller.core.log import get_logger
from controller.daemon.components import Component
from controller.daemon.mqttwire import PUBACK, Publish, ReadAhead, plain_publish, puback

log = get_logger("mqtt")

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
CONNECT_TIMEOUT_S = 10.0
ACK_TIMEOUT_S = 30.0
# QoS 1 messages handed to the broker before the first is acknowledged: 0 is
# paho's "no limit of its own", and the publisher's window (publisher.WINDOW,
# all of which `publish()` awaits before the next) bounds them, so a window goes
# out at once and loopback round trips never leave the broker idle. With a limit,
# paho walks every message in flight on each acknowledgement (O(window^2) a
# window: 15 % of the controller's CPU in a 10,000-node storm, by py-spy).
MAX_INFLIGHT = 0
# MQTT 5: a persistent session outlives a restart of the controller by this much
# (the broker keeps node reports for it meanwhile).
SESSION_EXPIRY_S = 7 * 24 * 3600
# MQTT 5 receive maximum: with manual acknowledgement, how many received QoS 1
# messages the broker lets wait for our acknowledgement. Above one ingest batch,
# so the next batch arrives while one commits; it bounds what a crash re-delivers.
RECEIVE_MAXIMUM = 2000


@dataclass(frozen=True, slots=True)
class Receipt:
    """Which delivery a received message was: its acknowledgement names it."""

    connection: int  # BrokerLink.connections when it arrived: a packet id means nothing on another
    mid: int
    qos: int


@dataclass(frozen=True, slots=True)
class Message:
    """A message to publish, or one received."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    content_type: str | None = None  # MQTT 5 content type
    expiry_s: int | None = None  # MQTT 5 message expiry: the broker drops it after this
    # Set on a message received under manual acknowledgement: pass it to acknowledge().
    receipt: Receipt | None = field(default=None, compare=False, repr=False)


def _publish_properties(message: Message, packet: int = PacketTypes.PUBLISH) -> Properties | None:
    if message.content_type is None and message.expiry_s is None:
        return None
    return _properties(packet, message.content_type, message.expiry_s)


@functools.lru_cache(maxsize=16)
def _properties(packet: int, content_type: str | None, expiry_s: int | None) -> Properties:
    # Shared, never changed after this: paho only reads them when it packs a
    # message, and building one is most of the cost of a publish.
    props = Properties(packet)  # type: ignore[no-untyped-call]
    if content_type is not None:
        props.ContentType = content_type
    if expiry_s is not None:
        props.MessageExpiryInterval = expiry_s
    return props


async def _publish(
    client: aiomqtt.Client, message: Message, *, wait_s: float | None = None
) -> None:
    """One message with its properties (wait_s None: the client's own timeout)."""
    await client.publish(
        message.topic,
        message.payload,
        qos=message.qos,
        retain=message.retain,
        properties=_publish_properties(message),
        timeout=wait_s,
    )


class LinkDown(NetrootError):
    """The broker is not connected, or the connection dropped during a publish."""


def backoff_delay(
    attempt: int, *, first: float = BACKOFF_FIRST_S, cap: float = BACKOFF_MAX_S
) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0-based): capped doubling, jittered.

    The jitter (50-100% of the step) keeps a fleet of controllers or nodes
    from reconnecting in lock-step after a broker restart.
    """
    step: float = min(cap, first * 2.0 ** min(attempt, 16))
    return step * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not cryptography)


def _password(config: MqttConfig) -> str | None:
    if config.password_file is None:
        return None
    try:
        # Read at every connect, so a rotated password needs no restart.
        return config.password_file.read_text().rstrip("\n")
    except OSError as exc:
        raise LinkDown(f"cannot read mqtt.password_file {config.password_file}: {exc}") from None


def _tls_context(config: MqttConfig) -> ssl.SSLContext | None:
    if not config.tls:
        return None
    try:
        context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
        if config.cert_file is not None:
            key = str(config.key_file) if config.key_file else None
            context.load_cert_chain(str(config.cert_file), key)
    except (OSError, ssl.SSLError) as exc:
        raise LinkDown(f"mqtt TLS files: {exc}") from None
    return context


class _Window:
    """Packet ids of one `publish()` call still waiting for their acknowledgement."""

    def __init__(self, waiting: set[int]) -> None:
        self.waiting = waiting
        self.done = asyncio.get_running_loop().create_future()

    def acked(self, mid: int) -> None:
        self.waiting.discard(mid)
        if not self.waiting and not self.done.done():
            self.done.set_result(None)


def _read_publishes_here(paho: paho_client.Client, deliver: Callable[[*Publish], None]) -> None:
    """A boot storm's PUBLISH packets are read by mqttwire and handed to deliver, not
    to paho's reader (what mqttwire does not read, paho does, as before)."""
    paho_handle_publish = paho._handle_publish

    def handle_publish() -> MQTTErrorCode:
        packet = paho._in_packet
        plain = plain_publish(packet["command"], packet["packet"])
        if plain is None:
            return paho_handle_publish()
        deliver(*plain)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    # paho reads one packet per call (a dozen calls and a dict rebuilt for each);
    # here one socket read and the plain PUBLISH packets in it are taken in one
    # loop. paho reads the rest: any other packet, one cut off by the end of a
    # read, and the end of the connection or a socket error.
    paho_packet_read = paho._packet_read

    def packet_read() -> MQTTErrorCode:
        sock = paho._sock
        if paho._in_packet["command"] == 0 and isinstance(sock, ReadAhead):
            try:
                taken = sock.publishes()
            except (BlockingIOError, ssl.SSLWantReadError):
                return MQTTErrorCode.MQTT_ERR_AGAIN  # nothing more to read for now
            except OSError:
                taken = []  # paho's own read meets it again and ends the connection
            if taken:
                for plain in taken:
                    deliver(*plain)
                with paho._msgtime_mutex:  # what paho's keepalive looks at
                    paho._last_bytes_received = paho_client.time_func()
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        return paho_packet_read()

    paho._handle_publish = handle_publish  # type: ignore[method-assign]
    paho._packet_read = packet_read  # type: ignore[method-assign]


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()


class BrokerLink(Component):
    """One broker connection, kept alive by `run()`; an async context manager."""

    name = "mqtt"

    def __init__(
        self,
        config: MqttConfig,
        *,
        client_id: str,
        subscriptions: Sequence[str] = (),
        will: Callable[[], Message] | None = None,
        hello: Callable[[], Message] | None = None,
        clean_session: bool = True,
        manual_ack: bool = False,
        max_packet_size: int | None = None,
    ) -> None:
        """will and hello are made anew for each connection: each is a new event.

        With manual_ack, a received QoS 1 message is acknowledged to the broker only
        when the consumer calls `acknowledge()` (after it made the message durable);
        with a persistent session the broker re-delivers the others after a crash.
        With max_packet_size (MQTT 5), the broker drops any larger message meant
        for us instead of sending it: an oversized payload is never read here.
        """
        self.config = config
        self.client_id = client_id
        self.subscriptions = tuple(subscriptions)
        self.will = will
        self.hello = hello
        self.clean_session = clean_session
        self.manual_ack = manual_ack
        self.max_packet_size = max_packet_size
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.attempted = asyncio.Event()  # the first connection attempt has finished
        self.connections = 0
        self.connected_since: datetime | None = None  # when the current connection came up
        self._connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._session: asyncio.Task[None] | None = None
        self._closing = False
        self._restart = asyncio.Event()
        self._windows: dict[int, _Window] = {}  # packet id -> the publish() awaiting it

    async def teardown(self) -> None:
        """End the session `run` keeps (a `close()` said goodbye before, if anyone did)."""
        self._closing = True
        if self._session is not None:
            self._session.cancel()

    @property
    def connected(self) -> bool:
        """True while a connection is up."""
        return self._client is not None

    async def wait_connected(self) -> None:
        """Return once a connection is up."""
        await self._connected.wait()

    def _make_client(self) -> aiomqtt.Client:
        config = self.config
        will = None
        if self.will is not None:
            last = self.will()
            will = aiomqtt.Will(
                last.topic,
                last.payload,
                qos=last.qos,
                retain=last.retain,
                properties=_publish_properties(last, PacketTypes.WILLMESSAGE),
            )
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect.SessionExpiryInterval = 0 if self.clean_session else SESSION_EXPIRY_S
        if self.manual_ack:
            connect.ReceiveMaximum = RECEIVE_MAXIMUM
        if self.max_packet_size is not None:
            connect.MaximumPacketSize = self.max_packet_size
        client = aiomqtt.Client(
            config.host,
            config.port,
            username=config.username,
            password=_password(config),
            identifier=self.client_id,
            will=will,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=self.clean_session,
            properties=connect,
            keepalive=config.keepalive,
            timeout=CONNECT_TIMEOUT_S,
            tls_context=_tls_context(config),
            max_inflight_messages=MAX_INFLIGHT,
        )
        # aiomqtt warns (and counts its pending calls) on every publish above this
        # threshold: with a window of acknowledgements in flight, that is every one.
        client.pending_calls_threshold = 1_000_000
        if self.manual_ack:
            # aiomqtt 2.5 has no option for it; its paho client has (paho acks in
            # on_message otherwise, before the message is even in our inbox).
            client._client.manual_ack_set(True)
        # publish() hands whole windows to paho and waits for them together, not
        # one asyncio future and timer per message as aiomqtt's publish does.
        # paho calls on_publish in the event loop's thread (aiomqtt drives it).
        aiomqtt_on_publish = client._on_publish
        windows = self._windows = {}

        def on_publish(
            paho: paho_client.Client,
            userdata: object,
            mid: int,
            reason: ReasonCode,
            properties: Properties,
        ) -> None:
            window = windows.pop(mid, None)
            if window is not None:
                window.acked(mid)
            else:
                aiomqtt_on_publish(paho, userdata, mid, reason, properties)

        client._client.on_publish = on_publish
        # Received messages go straight to the inbox, as our Message, from paho's
        # callback (in the event loop's thread): aiomqtt's message iterator costs a
        # task and an asyncio.wait per message, as much as applying a report.
        # Set before connecting: a persistent session's messages may come first.
        inbox, manual = self.inbox, self.manual_ack
        connection = self.connections + 1  # the number this client's connection gets

        def deliver(topic: str, payload: bytes, qos: int, retain: bool, mid: int) -> None:
            receipt = Receipt(connection, mid, qos) if manual and qos > 0 else None
            inbox.put_nowait(Message(topic, payload, qos, retain, receipt=receipt))

        def on_message(
            paho: paho_client.Client, userdata: object, received: paho_client.MQTTMessage
        ) -> None:
            payload = _payload_bytes(received.payload)
            deliver(received.topic, payload, received.qos, received.retain, received.mid)

        client._client.on_message = on_message
        if manual:
            # The report connection: acknowledged by acknowledge(). Other links keep
            # paho's reading, which acknowledges on its own.
            _read_publishes_here(client._client, deliver)
        # paho calls on_socket_open (in the thread that connects) before it sends
        # CONNECT; from then on paho and aiomqtt's reader both see the read-ahead.
        aiomqtt_socket_open = client._client.on_socket_open
        if aiomqtt_socket_open is None:
            raise RuntimeError("aiomqtt no longer drives paho through on_socket_open")

        def on_socket_open(paho: paho_client.Client, userdata: object, sock: object) -> None:
            ahead = ReadAhead(sock)
            paho._sock = ahead
            aiomqtt_socket_open(paho, userdata, ahead)

        client._client.on_socket_open = on_socket_open
        return client

    async def run(self) -> None:
        """Connect, subscribe, deliver messages to `inbox`; reconnect until closed."""
        attempt = 0
        while not self._closing:
            self._restart.clear()
            self._session = asyncio.create_task(self._connection(), name="mqtt-session")
            before = self.connections
            try:
                await self._session
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # run() itself is being cancelled
                pass  # reconfigure() or close() ended the session
            except (aiomqtt.MqttError, LinkDown) as exc:
                log.warning(
                    "broker unreachable or connection lost",
                    host=self.config.host,
                    port=self.config.port,
                    error=str(exc),
                )
            finally:
                self._client = None
                self._connected.clear()
                self.attempted.set()
            if self.connections > before:
                attempt = 0  # it was up: the next try is a quick one
            if self._closing:
                break
            if self._restart.is_set():
                continue
            delay = backoff_delay(attempt)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._restart.wait(), delay)

    async def _connection(self) -> None:
        client = self._make_client()
        async with client:
            self.connections += 1
            self.connected_since = datetime.now(UTC)
            log.info("connected to broker", host=self.config.host, port=self.config.port)
            if self.hello is not None:
                await _publish(client, self.hello())
            for topic in self.subscriptions:
                await client.subscribe(topic, qos=1)
            self._client = client
            self._connected.set()
            self.attempted.set()
            # Messages reach the inbox from paho's callback (see _make_client); the
            # session lasts until the connection ends. Shielded: cancelling this
            # task must not cancel aiomqtt's own future.
            await asyncio.shield(client._disconnected)
            raise aiomqtt.MqttError("disconnected from the broker")

    async def publish(self, messages: Sequence[Message]) -> int:
        """Publish in order; returns how many, from the first, the broker acknowledged.

        All are handed to the client before any acknowledgement is awaited, so
        they go out in order on one connection, all in flight at once (see
        MAX_INFLIGHT: the caller's batch is the bound); a QoS 0 message counts
        once sent.
        """
        client = self._client
        session = self._session
        if client is None or session is None:
            raise LinkDown("not connected to the broker")
        paho = client._client  # see _make_client
        infos: list[paho_client.MQTTMessageInfo] = []
        window = _Window(set())
        windows = self._windows
        for m in messages:
            info = paho.publish(m.topic, m.payload, m.qos, m.retain, _publish_properties(m))
            if info.rc not in (paho_client.MQTT_ERR_SUCCESS, paho_client.MQTT_ERR_NO_CONN):
                break  # the rest would go out of order after a gap
            infos.append(info)
            if m.qos > 0 and not info.is_published():
                window.waiting.add(info.mid)
                windows[info.mid] = window
        if window.waiting:
            # Until all are acknowledged, the connection ends, or the broker is stuck.
            await asyncio.wait({window.done, session}, timeout=ACK_TIMEOUT_S,
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            for mid in window.waiting:
                windows.pop(mid, None)
        acked = 0
        for m, info in zip(messages, infos, strict=False):
            if m.qos > 0 and not info.is_published():
                break
            acked += 1
        if acked < len(messages):
            log.warning("publish interrupted", acked=acked, pending=len(messages) - acked)
        return acked

    def acknowledge(self, messages: Sequence[Message]) -> int:
        """Acknowledge received messages to the broker, in the order given; returns how many.

        Call once they are applied durably, in the order they arrived (MQTT wants
        acknowledgements in order). A message that came on an earlier connection is
        skipped: the broker delivers it again on this one (a duplicate to tolerate).
        """
        client = self._client
        if client is None:
            return 0
        paho = client._client  # see _make_client
        pubacks = bytearray()
        sent = 0
        for message in messages:
            receipt = message.receipt
            if receipt is None or receipt.connection != self.connections:
                continue
            if receipt.qos == 1:
                pubacks += puback(receipt.mid)
            else:
                paho.ack(receipt.mid, receipt.qos)
            sent += 1
        if pubacks:
            # One write for the batch's PUBACKs, as paho.ack would send them one by one:
            # a thousand sends (and a thousand wake-ups of the broker) less per batch.
            paho._packet_queue(PUBACK, bytes(pubacks), 0, 1)
        return sent

    def reconfigure(self, config: MqttConfig, subscriptions: Sequence[str] | None = None) -> None:
        """Use new settings: reconnect at once if they differ."""
        subs = self.subscriptions if subscriptions is None else tuple(subscriptions)
        if config == self.config and subs == self.subscriptions:
            return
        self.config, self.subscriptions = config, subs
        self._restart.set()
        if self._session is not None:
            self._session.cancel()

    async def close(self, goodbye: Message | None = None, wait_s: float = 5.0) -> None:
        """Publish goodbye (if connected) and disconnect cleanly; run() returns."""
        self._closing = True
        client = self._client
        if client is not None and goodbye is not None:
            try:
                await _publish(client, goodbye, wait_s=wait_s)
            except aiomqtt.MqttError as exc:
                log.warning("could not publish the goodbye message", error=str(exc))
        self._restart.set()
        if self._session is not None:
            self._session.cancel()
