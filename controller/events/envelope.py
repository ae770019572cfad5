"""The CloudEvents 1.0 envelope of every event, the registry of event types, and the JSON
Schemas `netroot schema` prints.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, Field
from pydantic.json_schema import SkipJsonSchema

from controller.core.model import Model
from controller.events.node_events import (
    NodeBooted,
    NodeBootTiming,
    NodeCurrent,
    NodeDhcp,
    NodeDiff,
    NodeLost,
    NodeRemounted,
    NodeRemountRequested,
    NodeStale,
    NodeState,
)
from controller.events.node_messages import NodeCommand, NodeReport
from controller.events.payloads import (  # canary rollouts (issue 12)
    SCHEMA_ID_PREFIX,
    Activated,
    BuildFailed,
    BuildStarted,
    BuildSucceeded,
    CanaryFailed,
    CanaryNodePassed,
    CanaryPassed,
    CanaryStarted,
    ConfigRejected,
    ConfigReloaded,
    ControllerStatus,
    ImageReplicated,
    ImageReplicationFailed,
    ImageState,
    Payload,
    Pruned,
    ReplicaState,
    RolledBack,
    StateIndex,
    schema_id,
)

SPECVERSION: Final = "1.0"
CONTENT_TYPE: Final = "application/cloudevents+json"  # MQTT 5 content type of an envelope
JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

PAYLOAD_MODELS: tuple[type[Payload], ...] = (
    BuildStarted,
    BuildSucceeded,
    BuildFailed,
    Activated,
    RolledBack,
    Pruned,
    ImageState,
    NodeDhcp,
    NodeBooted,
    NodeBootTiming,
    NodeStale,
    NodeRemountRequested,
    NodeRemounted,
    NodeLost,
    NodeCurrent,
    NodeDiff,
    NodeState,
    ControllerStatus,
    StateIndex,
    *(CanaryStarted, CanaryNodePassed, CanaryPassed, CanaryFailed),
    *(ImageReplicated, ImageReplicationFailed, ReplicaState),
)
# Events about the controller itself, beyond the image and node topics of docs/design.md §9
# (published on Topics.controller_events).
CONTROLLER_EVENT_MODELS: tuple[type[Payload], ...] = (ConfigReloaded, ConfigRejected)
EVENT_MODELS: dict[str, type[Payload]] = {
    m.event_type: m for m in (*PAYLOAD_MODELS, *CONTROLLER_EVENT_MODELS)
}


class Envelope(Model):
    """A CloudEvents 1.0 structured-mode JSON event."""

    specversion: Literal["1.0"] = SPECVERSION
    id: str = Field(min_length=1, max_length=128)
    source: str = Field(
        min_length=1,
        max_length=1024,
        json_schema_extra={"format": "uri-reference"},
        description="netroot://<host> of the controller",
    )
    type: str = Field(pattern=r"^org\.netroot(\.[a-z0-9_]+)+$")
    time: AwareDatetime
    # CloudEvents attributes are never null: an absent subject is left out.
    subject: Annotated[str, Field(min_length=1)] | SkipJsonSchema[None] = None
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: (
        Annotated[str, Field(pattern=f"^{SCHEMA_ID_PREFIX}", json_schema_extra={"format": "uri"})]
        | SkipJsonSchema[None]
    ) = Field(None, description="the $id of the data's schema in `netroot schema`")
    data: dict[str, Any]


def envelope_json(
    data: Payload,
    subject: str | None,
    source: str,
    *,
    now: datetime,
    event_id: str | None = None,
    data_json: str | None = None,
) -> bytes:
    """The bytes of the envelope of data, as the Envelope model reads them.

    Built as text rather than through the Envelope model: the daemon wraps
    payloads of every node report, and in a boot storm validating again data
    it just built is the cost. data_json is data.model_dump_json() when the
    caller has it already.
    """
    return wrap_json(
        type(data), data_json or data.model_dump_json(), subject, source, now=now, event_id=event_id
    )


def wrap_json(
    kind: type[Payload],
    data_json: str,
    subject: str | None,
    source: str,
    *,
    now: datetime,
    event_id: str | None = None,
) -> bytes:
    """The envelope of a payload of type kind already serialised (a node's stored state).

    What is the same for every event of a type from a source (the type,
    source and schema attributes) is made once.
    """
    if now.tzinfo is None:
        raise ValueError("event time must be timezone-aware")
    head, tail = _fixed(source, kind.event_type, kind.schema_id())
    subject_field = f'"subject":{_quoted(subject)},' if subject is not None else ""
    return (
        f'{{"specversion":"{SPECVERSION}","id":{_quoted(event_id or fast_uuid4())},{head}'
        f'"time":"{now.isoformat().replace("+00:00", "Z")}",{subject_field}{tail}'
        f'"data":{data_json}}}'
    ).encode()


# A JSON string as json.dumps(ensure_ascii=False) writes it (the same C function).
_quoted: Callable[[str], str] = json.encoder.encode_basestring


@functools.lru_cache(maxsize=256)
def _fixed(source: str, event_type: str, dataschema: str) -> tuple[str, str]:
    """The attributes before and after `time` and `subject` that a source and type fix."""
    head = f'"source":{_quoted(source)},"type":{_quoted(event_type)},'
    tail = f'"datacontenttype":"application/json","dataschema":"{dataschema}",'
    return head, tail


# The bits uuid.UUID(int=..., version=4) sets and clears: RFC 4122 variant, version 4.
_UUID4_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))
_UUID4_SET = (0x8000 << 48) | (4 << 76)


def fast_uuid4() -> str:
    """A random (version 4) UUID without a getrandom(2) call per id.

    Event ids only need to be unique, not unpredictable; the generator is
    seeded from the OS at start-up. The text is str(uuid.UUID(...)), made
    without the UUID object.
    """
    h = "%032x" % (_ids.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_ids = random.Random()  # noqa: S311 (uniqueness, not secrecy)


# What a subscriber may rely on in every envelope (CloudEvents' required four,
# plus what netroot always sends).
ENVELOPE_REQUIRED = (
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
)


def _identified(name: str, schema: dict[str, Any], version: int = 1) -> dict[str, Any]:
    return {"$schema": JSON_SCHEMA_DIALECT, "$id": schema_id(name, version), **schema}


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every payload (keyed by event type), the envelope and the node messages."""
    schemas = {
        m.event_type: _identified(m.event_type, m.model_json_schema(), m.schema_version)
        for m in (*PAYLOAD_MODELS, *CONTROLLER_EVENT_MODELS)
    }
    envelope_schema = Envelope.model_json_schema()
    envelope_schema["required"] = list(ENVELOPE_REQUIRED)
    for prop in envelope_schema["properties"].values():
        if prop.get("default", "") is None:
            del prop["default"]  # never null: absent instead
    schemas["envelope"] = _identified("envelope", envelope_schema)
    schemas["node.report"] = _identified("node.report", NodeReport.model_json_schema())
    schemas["node.command"] = _identified("node.command", NodeCommand.model_json_schema())
    return schemas
