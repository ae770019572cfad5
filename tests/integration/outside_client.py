"""A monitoring client as an outsider writes it: paho-mqtt (MQTT 5), the CloudEvents SDK
and jsonschema, and the schemas `netroot schema` prints. No netroot code is imported here.

It records everything under the prefix, checks every event as it arrives and
derives the state a dashboard would show from the retained topics.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import jsonschema
import paho.mqtt.client as paho
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

CLOUDEVENTS_JSON = "application/cloudevents+json"


@dataclass(frozen=True)
class Seen:
    """One delivery."""

    topic: str
    payload: bytes
    retain: bool
    content_type: str | None
    expiry: int | None

    @property
    def event(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.payload)
        return value


def _validators(schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """$id -> validator with format checking (the formats a strict validator knows)."""
    out = {}
    for schema in schemas.values():
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        out[schema["$id"]] = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return out


class OutsideSubscriber:
    """Subscribes to `<prefix>/#` with a persistent MQTT 5 session, checking as it goes."""

    def __init__(
        self,
        port: int,
        schemas: dict[str, dict[str, Any]],
        prefix: str = "netroot",
        topics: tuple[str, ...] | None = None,
        persistent: bool = True,
    ) -> None:
        self.prefix = prefix
        self.validators = _validators(schemas)
        self.envelope = self.validators[schemas["envelope"]["$id"]]
        self.seen: list[Seen] = []
        self.problems: list[str] = []
        self.by_id: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.topics = topics or (f"{prefix}/#",)
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"outside-{uuid.uuid4().hex[:10]}",
            protocol=paho.MQTTv5,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        # paho annotates the delays int, yet does float arithmetic with them: 0.2 s is meant
        self.client.reconnect_delay_set(0.2, 1)  # type: ignore[arg-type]
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # as mqtt.py
        connect.SessionExpiryInterval = 3600 if persistent else 0
        self.client.connect(
            "127.0.0.1", port, keepalive=10, clean_start=not persistent, properties=connect
        )
        self.client.loop_start()
        if not self.subscribed.wait(20):
            raise AssertionError("the outside subscriber could not subscribe")

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if not getattr(flags, "session_present", False) or not self.subscribed.is_set():
            for topic in self.topics:
                client.subscribe(topic, qos=1)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        seen = Seen(
            msg.topic,
            bytes(msg.payload),
            bool(msg.retain),
            getattr(props, "ContentType", None),
            getattr(props, "MessageExpiryInterval", None),
        )
        problems = self._check(seen)
        with self.lock:
            self.seen.append(seen)
            self.problems.extend(problems)

    def _check(self, seen: Seen) -> list[str]:
        """Everything an event promises, checked as a strict consumer would."""
        if not seen.payload:
            return []  # a retained message being cleared
        if seen.topic.endswith("/cmd") or seen.topic.endswith("/report"):
            return []  # node messages are plain JSON, not events
        where = f"{seen.topic}: "
        problems = []
        if seen.content_type != CLOUDEVENTS_JSON:
            problems.append(f"{where}content type {seen.content_type!r}")
        try:
            event = JSONFormat().read(CloudEvent, seen.payload)
        except Exception as exc:  # the SDK's own errors: any is a failure here
            return [*problems, f"{where}the CloudEvents SDK refused it: {exc}"]
        raw = seen.event
        problems.extend(f"{where}envelope: {e.message}" for e in self.envelope.iter_errors(raw))
        schema = self.validators.get(event.get_attributes().get("dataschema", ""))
        if schema is None:
            problems.append(f"{where}no schema for dataschema {raw.get('dataschema')!r}")
        else:
            data = raw.get("data")
            problems.extend(f"{where}data: {e.message}" for e in schema.iter_errors(data))
        with self.lock:
            before = self.by_id.setdefault(raw["id"], seen.payload)
        if before != seen.payload:
            problems.append(f"{where}id {raw['id']} repeated with different content")
        return problems

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def all(self) -> list[Seen]:
        with self.lock:
            return list(self.seen)

    def events(self, type_suffix: str | None = None) -> list[dict[str, Any]]:
        """Envelopes, first delivery of each id, in arrival order."""
        out, ids = [], set()
        for seen in self.all():
            if not seen.payload or seen.topic.endswith(("/cmd", "/report")):
                continue
            event = seen.event
            if event["id"] in ids:
                continue
            ids.add(event["id"])
            if type_suffix is None or event["type"] == f"org.netroot.{type_suffix}":
                out.append(event)
        return out

    def derived(self) -> dict[str, Any]:
        """The state a dashboard shows: the last message of each retained topic."""
        last: dict[str, dict[str, Any]] = {}
        for seen in self.all():
            if seen.payload and (
                seen.topic.startswith(f"{self.prefix}/state/")
                or seen.topic == f"{self.prefix}/controller/status"
            ):
                last[seen.topic] = seen.event["data"]
        images = {
            t.rsplit("/", 1)[1]: (d["active"] or {}).get("version")
            for t, d in last.items()
            if t.startswith(f"{self.prefix}/state/image/")
        }
        nodes = {
            t.rsplit("/", 1)[1]: d["state"]
            for t, d in last.items()
            if t.startswith(f"{self.prefix}/state/node/")
        }
        status = last.get(f"{self.prefix}/controller/status", {})
        return {
            "controller": status.get("status"),
            "images": images,
            "nodes": nodes,
            "index": last.get(f"{self.prefix}/state/index"),
        }
