"""Event envelope, payload models, MQTT topics and node-message validation (pure).

Everything the controller publishes is a CloudEvents 1.0 structured JSON
envelope whose `data` is one of the payload models below. The two messages a
node exchanges (its report and the command it receives) are plain JSON
objects instead: the node agent is a POSIX shell script, and asking it to
build or unwrap envelopes would only add ways to get it wrong.
"""

from __future__ import annotations

import functools
import json
import random
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    Field,
    IPvAnyAddress,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from controller.core.errors import NetrootError
from controller.core.ids import LABEL_RE
from controller.core.model import Model

SPECVERSION: Final = "1.0"
TYPE_PREFIX = "org.netroot."
CONTENT_TYPE: Final = "application/cloudevents+json"  # MQTT 5 content type of an envelope
# A node command the broker still holds after this is dropped (MQTT 5 expiry):
# a reboot meant for an old boot must not run when the node reconnects later.
COMMAND_EXPIRY_S: Final = 300
JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
# Schema ids are URNs: names, not addresses; `netroot schema` is where the text is.
SCHEMA_ID_PREFIX: Final = "urn:netroot:schema:"
DEFAULT_PREFIX = "netroot"
# A report is a few hundred bytes; the cap keeps a hostile or broken node from
# making the controller parse megabytes per message.
MAX_REPORT_BYTES = 8192
# Same rule as MqttConfig.topic_prefix: no wildcards, no empty levels.
TOPIC_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
MAC_EXAMPLE = "aa:bb:cc:dd:ee:ff"
# What the schema documents: upper case is accepted and normalised.
MAC_JSON_PATTERN = "^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"


def normalize_mac(value: str) -> str:
    """Return the MAC in aa:bb:cc:dd:ee:ff form, or raise ValueError saying why not."""
    mac = value.lower()
    if not MAC_RE.fullmatch(mac):
        raise ValueError(f"{value!r} is not a MAC address like {MAC_EXAMPLE}")
    if int(mac[:2], 16) & 1:
        # The group bit: broadcast and multicast addresses never identify a NIC.
        raise ValueError(f"{value!r} is a multicast address, not a node's MAC")
    if mac == "00:00:00:00:00:00":
        raise ValueError(f"{value!r} is the null address, not a node's MAC")
    return mac


Mac = Annotated[
    str,
    AfterValidator(normalize_mac),
    WithJsonSchema({"type": "string", "pattern": MAC_JSON_PATTERN, "examples": [MAC_EXAMPLE]}),
]
Label = Annotated[str, Field(pattern=f"^{LABEL_RE.pattern}$")]
VersionId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+:-]{0,127}$")]
# /proc/sys/kernel/random/boot_id: a lowercase UUID.
BootId = Annotated[str, Field(pattern=r"^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$")]
ShortText = Annotated[str, Field(max_length=1024)]
# pydantic documents IPvAnyAddress with its own format name, which strict
# validators refuse; these are the standard JSON Schema formats.
IpAddress = Annotated[
    IPvAnyAddress,
    WithJsonSchema({"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}),
]
BuildId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="names the build log: <state_dir>/logs/<label>/<build_id>.log",
    ),
]
ActivationReason = Literal["auto", "cli", "rollback", "canary"]
BuildKind = Literal["full", "overlay"]
NodePhase = Literal["unknown", "dhcp", "booting", "up", "stale", "lost"]
StaleAction = Literal["reboot", "remount"]


class Payload(Model):
    """Base of every model that travels as the `data` of an envelope."""

    event_type: ClassVar[str]
    # Fields are only ever added; a breaking change is a new event type
    # (`...activated.v2`) with its own schema, never a new meaning of the old one.
    schema_version: ClassVar[int] = 1

    @classmethod
    def schema_id(cls) -> str:
        """The `$id` of this payload's JSON Schema, named by each event's `dataschema`."""
        return schema_id(cls.event_type, cls.schema_version)


def schema_id(name: str, version: int = 1) -> str:
    """A versioned schema id, such as urn:netroot:schema:org.netroot.image.activated:1."""
    return f"{SCHEMA_ID_PREFIX}{name}:{version}"


# --- image events -------------------------------------------------------------


class ImageEventData(Payload):
    """Fields every image event carries."""

    label: Label


class BuildStarted(ImageEventData):
    """A build of the label began."""

    event_type: ClassVar[str] = TYPE_PREFIX + "image.build.started"
    build_id: BuildId
    kind: BuildKind = Field(description="full rebuild, or overlay-only clone of the active version")
    reason: ShortText = Field("", description="what triggered the build (an edit, the CLI...)")
    paths: tuple[ShortText, ...] = Field((), max_length=100, description="changed files, if any")


class BuildSucceeded(ImageEventData):
    """A build produced a complete, verified version."""

    event_type: ClassVar[str] = TYPE_PREFIX + "image.build.succeeded"
    build_id: BuildId
    kind: BuildKind
    version: VersionId
    duration_s: float = Field(ge=0)
    adopted: bool = Field(
        False,
        description="the build committed while no controller watched it (a killed daemon); "
        "announced when the controller found it",
    )


class BuildFailed(ImageEventData):
    """A build failed; the active version is untouched."""

    event_type: ClassVar[str] = TYPE_PREFIX + "image.build.failed"
    build_id: BuildId
    kind: BuildKind
    step: str = Field(max_length=128, description="the build step that failed")
    error: ShortText
    log_tail: str = Field("", max_length=16384, description="last lines of the build log")
    duration_s: float = Field(ge=0)


class Activated(ImageEventData):
    """A version became the one new boots of the label get."""

    event_type: ClassVar[str] = TYPE_PREFIX + "image.activated"
    version: VersionId
    previous: VersionId | None = None
    kernel: str | None = Field(None, max_length=256)
    build_id: BuildId | None = Field(None, description="the build that made the version")
    reason: ActivationReason = Field(
        "cli",
        description="auto: the controller activated its own build (activation = auto); "
        "cli: `netroot activate` or `build --activate` by hand; rollback and canary are "
        "reserved (a rollback is announced as image.rolled_back)",
    )


class RolledBack(ImageEventData):
    """The label went back to the version active before the current one."""

    event_type: ClassVar[str] = TYPE_PREFIX + "image.rolled_back"
    version: VersionId = Field(description="the version now active")
    previous: VersionId = Field(description="the version rolled back from")
    build_id: BuildId | None = Field(None, description="the build that made the version")


class Pruned(ImageEventData):
    """Versions were deleted by garbage collection."""

    event_type: ClassVar[str] = TYPE_PREFIX + "image.pruned"
    versions: tuple[VersionId, ...] = Field(min_length=1)
    kept: tuple[VersionId, ...] = ()


class VersionSummary(Model):
    """What a subscriber needs to know about one version."""

    version: VersionId
    built_at: AwareDatetime
    kind: BuildKind
    kernel: str | None = Field(None, max_length=256)
    file_count: int = Field(ge=0)
    size_bytes: int = Field(ge=0)


class ImageState(ImageEventData):
    """Retained: the label's active version and its rollback target."""

    event_type: ClassVar[str] = TYPE_PREFIX + "image.state"
    active: VersionSummary | None = None
    activated_at: AwareDatetime | None = None
    previous: VersionId | None = Field(None, description="what `netroot rollback` would activate")


# --- nodes --------------------------------------------------------------------


class RootMount(Model):
    """How the node's / is mounted, as the agent sees it in /proc/mounts."""

    fstype: str = Field(max_length=64, description="fstype of /: overlay, nfs, nfs4...")
    source: ShortText = Field("", description="source of / (server:/path for NFS)")
    lower: ShortText | None = Field(None, description="NFS source under the tmpfs overlay")


class NodeState(Payload):
    """Retained node state, and the state the node state machine works on."""

    event_type: ClassVar[str] = TYPE_PREFIX + "node.state"
    mac: Mac
    state: NodePhase = "unknown"
    label: Label | None = None
    version: VersionId | None = Field(None, description="the version the node reported running")
    active_version: VersionId | None = Field(None, description="the label's active version")
    action: StaleAction | None = Field(None, description="what clears a stale node")
    reason: ShortText = ""
    ip: IpAddress | None = None
    kernel: str | None = Field(None, max_length=256)
    boot_id: BootId | None = None
    root: RootMount | None = None
    since: AwareDatetime | None = Field(None, description="when the node entered this state")
    last_seen: AwareDatetime | None = None

    @model_validator(mode="after")
    def _action_only_when_stale(self) -> Self:
        if (self.state == "stale") != (self.action is not None):
            raise ValueError("action is set exactly when state is 'stale'")
        return self


class NodeEventData(Payload):
    """Fields every node event carries: who, what it runs, and its state after the event."""

    mac: Mac
    state: NodePhase
    label: Label | None = None
    version: VersionId | None = None


class NodeDhcp(NodeEventData):
    """The DHCP server leased an address to the node."""

    event_type: ClassVar[str] = TYPE_PREFIX + "node.dhcp"
    ip: IpAddress
    firmware: bool = Field(description="requested by PXE/UEFI firmware: a boot is starting")
    hostname: str | None = Field(None, max_length=255)


class NodeBooted(NodeEventData):
    """The node's agent reported a boot."""

    event_type: ClassVar[str] = TYPE_PREFIX + "node.booted"
    boot_id: BootId
    kernel: str | None = Field(None, max_length=256)
    ip: IpAddress | None = None
    root: RootMount | None = None


class NodeStale(NodeEventData):
    """The node runs an outdated or broken root and must remount or reboot."""

    event_type: ClassVar[str] = TYPE_PREFIX + "node.stale"
    action: StaleAction
    active_version: VersionId | None = None
    reason: ShortText = ""
    commanded: bool = Field(description="the controller sent the node the action's command")


class NodeRemountRequested(NodeEventData):
    """The controller asked the node to remount its root."""

    event_type: ClassVar[str] = TYPE_PREFIX + "node.remount_requested"
    reason: ShortText = ""


class NodeRemounted(NodeEventData):
    """The node remounted its root successfully."""

    event_type: ClassVar[str] = TYPE_PREFIX + "node.remounted"


class NodeLost(NodeEventData):
    """The node went offline (its will, a clean stop, or silence)."""

    event_type: ClassVar[str] = TYPE_PREFIX + "node.lost"
    reason: ShortText = ""


class NodeCurrent(NodeEventData):
    """The node now runs the active version of its label."""

    event_type: ClassVar[str] = TYPE_PREFIX + "node.current"


class ControllerStatus(Payload):
    """Retained controller presence and health; the offline form is also the MQTT will.

    Every publication is a new event (its own `id` and `time`). While online it
    is refreshed every `heartbeat_s` seconds; a status older than about twice
    that means the controller is stuck or cut off even if it still says online.
    A will (`will` true) is published by the broker after it lost the
    controller: the controller cannot know that moment, so a will has no
    `since` and no counters, and its envelope `time` is when the will was set
    (the start of that connection), not when the controller went away.
    """

    event_type: ClassVar[str] = TYPE_PREFIX + "controller.status"
    status: Literal["online", "offline"]
    netroot_version: str = Field("", max_length=64)
    since: AwareDatetime | None = Field(
        None, description="when the controller entered this status; absent in a will"
    )
    will: bool = Field(
        False, description="published by the broker on the controller's behalf (MQTT will)"
    )
    started_at: AwareDatetime | None = Field(
        None, description="when this controller process started"
    )
    broker_connected: bool | None = Field(
        None, description="the controller's broker link is up (false in its goodbye and its will)"
    )
    connections: int | None = Field(
        None, ge=0, description="broker connections made since start (more than 1: reconnects)"
    )
    outbox_pending: int | None = Field(None, ge=0, description="events not yet acknowledged")
    outbox_dropped: int | None = Field(None, ge=0, description="events dropped at the bound")
    queued_builds: int | None = Field(None, ge=0, description="builds waiting to start")
    running_builds: tuple[Label, ...] = Field((), description="labels building now")
    heartbeat_s: float | None = Field(
        None, gt=0, description="while online, the next status comes within this many seconds"
    )


class LabelCounts(Model):
    """One label in the index: its active version and how many nodes are in each state."""

    active: VersionId | None = None
    nodes: dict[NodePhase, int] = Field(default_factory=dict)


class StateIndex(Payload):
    """Retained: every label and how many nodes of each state it has.

    A subscriber joining late reads this, then `state/image/+` and
    `state/node/+` (retained), and knows the whole state; `node_count` tells it
    how many node states to expect.
    """

    event_type: ClassVar[str] = TYPE_PREFIX + "state.index"
    labels: dict[Label, LabelCounts] = Field(default_factory=dict)
    unlabelled: dict[NodePhase, int] = Field(
        default_factory=dict, description="nodes that never reported a label, by state"
    )
    node_count: int = Field(ge=0, description="retained node states published")


class ConfigReloaded(Payload):
    """The daemon took a new configuration (SIGHUP or an edit of the file)."""

    event_type: ClassVar[str] = TYPE_PREFIX + "controller.config_reloaded"
    source: ShortText = Field(description="the config file")
    labels: tuple[Label, ...] = ()


class ConfigRejected(Payload):
    """A new configuration was invalid; the daemon keeps running on the previous one."""

    event_type: ClassVar[str] = TYPE_PREFIX + "controller.config_rejected"
    source: ShortText = Field(description="the config file")
    error: ShortText = Field(description="what is wrong, naming the field")


ReportKind = Literal["boot", "heartbeat", "remount_result", "offline"]
_REQUIRED_BY_KIND: dict[str, tuple[str, ...]] = {
    "boot": ("label", "version", "boot_id"),
    "heartbeat": ("label", "version"),
    "remount_result": ("label", "version", "ok"),
    "offline": (),
}


class NodeReport(Model):
    """What a node agent publishes on its report topic (plain JSON, no envelope)."""

    kind: ReportKind
    mac: Mac
    label: Label | None = None
    version: VersionId | None = Field(None, description="read from the mounted root")
    kernel: str | None = Field(None, max_length=256)
    ip: IpAddress | None = None
    boot_id: BootId | None = Field(None, description="/proc/sys/kernel/random/boot_id")
    root: RootMount | None = None
    ok: bool | None = Field(None, description="remount_result: whether the remount worked")
    error: ShortText = Field("", description="remount_result: why it failed")
    detail: ShortText = Field(
        "", description="remount_result: what the agent did and read back after the remount"
    )
    stale_handle: bool = Field(False, description="heartbeat: / answered ESTALE")

    @model_validator(mode="after")
    def _fields_for_kind(self) -> Self:
        missing = [name for name in _REQUIRED_BY_KIND[self.kind] if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a {self.kind} report needs {', '.join(missing)}")
        return self


class NodeCommand(Model):
    """What the controller publishes on a node's cmd topic (plain JSON, no envelope)."""

    command: Literal["remount", "reboot", "report"]
    id: str = Field(min_length=1, max_length=128)
    boot_id: BootId | None = Field(
        None, description="the boot this is meant for; an agent ignores a command for another boot"
    )
    version: VersionId | None = Field(None, description="the label's active version")
    reason: ShortText = ""


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
    NodeStale,
    NodeRemountRequested,
    NodeRemounted,
    NodeLost,
    NodeCurrent,
    NodeState,
    ControllerStatus,
    StateIndex,
)
# Events about the controller itself, beyond the image and node topics of docs/design.md §9
# (published on Topics.controller_events).
CONTROLLER_EVENT_MODELS: tuple[type[Payload], ...] = (ConfigReloaded, ConfigRejected)
EVENT_MODELS: dict[str, type[Payload]] = {
    m.event_type: m for m in (*PAYLOAD_MODELS, *CONTROLLER_EVENT_MODELS)
}


# --- envelope -----------------------------------------------------------------


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

    def to_json(self) -> bytes:
        """The bytes to publish."""
        return self.model_dump_json(exclude_none=True).encode()

    def payload(self) -> Payload:
        """The data parsed into its payload model; ValueError for an unknown type."""
        return _model_for(self.type).model_validate(self.data)


def _model_for(event_type: str) -> type[Payload]:
    try:
        return EVENT_MODELS[event_type]
    except KeyError:
        known = ", ".join(sorted(EVENT_MODELS))
        raise ValueError(f"unknown event type {event_type!r} (known: {known})") from None


def envelope(
    event_type: str,
    subject: str | None,
    data: Payload,
    source: str,
    *,
    now: datetime,
    event_id: str | None = None,
) -> Envelope:
    """Wrap a payload in an envelope; the id defaults to a fresh uuid4."""
    model = _model_for(event_type)
    if type(data) is not model:
        raise ValueError(f"{event_type} carries {model.__name__}, not {type(data).__name__}")
    if now.tzinfo is None:
        # A naive time would be serialised without offset and misread by subscribers.
        raise ValueError("event time must be timezone-aware")
    return Envelope(
        id=event_id or str(uuid.uuid4()),
        source=source,
        type=event_type,
        time=now,
        subject=subject,
        dataschema=model.schema_id(),
        data=data.model_dump(mode="json"),
    )


def envelope_json(
    data: Payload,
    subject: str | None,
    source: str,
    *,
    now: datetime,
    event_id: str | None = None,
) -> bytes:
    """The bytes `envelope(...).to_json()` gives, built without validating our own fields again.

    The daemon wraps three payloads per node report; in a boot storm the
    envelope model's second validation of data it just built is the cost.
    """
    if now.tzinfo is None:
        raise ValueError("event time must be timezone-aware")
    quoted = functools.partial(json.dumps, ensure_ascii=False)
    subject_field = f'"subject":{quoted(subject)},' if subject is not None else ""
    return (
        f'{{"specversion":"{SPECVERSION}","id":{quoted(event_id or fast_uuid4())},'
        f'"source":{quoted(source)},"type":{quoted(data.event_type)},'
        f'"time":"{now.isoformat().replace("+00:00", "Z")}",{subject_field}'
        f'"datacontenttype":"application/json","dataschema":"{data.schema_id()}",'
        f'"data":{data.model_dump_json()}}}'
    ).encode()


def fast_uuid4() -> str:
    """A random (version 4) UUID without a getrandom(2) call per id.

    Event ids only need to be unique, not unpredictable; the generator is
    seeded from the OS at start-up.
    """
    return str(uuid.UUID(int=_ids.getrandbits(128), version=4))


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


# --- topics -------------------------------------------------------------------


def _check_label(label: str) -> str:
    # A label lands in a topic level: '/', '+' or '#' would change what it means.
    if not LABEL_RE.fullmatch(label):
        raise ValueError(f"{label!r} is not a valid label for a topic")
    return label


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic of docs/design.md §9, under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not TOPIC_PREFIX_RE.fullmatch(self.prefix):
            raise ValueError(f"{self.prefix!r} is not a topic prefix like 'netroot' or 'a/netroot'")

    def controller_status(self) -> str:
        """Retained online/offline, also the controller's will."""
        return f"{self.prefix}/controller/status"

    def state_index(self) -> str:
        """Retained index of labels and node counts, for late subscribers."""
        return f"{self.prefix}/state/index"

    def controller_events(self) -> str:
        """Events about the controller itself (configuration reloaded or rejected)."""
        return f"{self.prefix}/events/controller"

    def image_events(self, label: str) -> str:
        """Image events of one label."""
        return f"{self.prefix}/events/image/{_check_label(label)}"

    def image_state(self, label: str) -> str:
        """Retained active-version summary of one label."""
        return f"{self.prefix}/state/image/{_check_label(label)}"

    def node_events(self, mac: str) -> str:
        """Events about one node."""
        return f"{self.prefix}/events/node/{normalize_mac(mac)}"

    def node_state(self, mac: str) -> str:
        """Retained state of one node."""
        return f"{self.prefix}/state/node/{normalize_mac(mac)}"

    def node_report(self, mac: str) -> str:
        """Where one node's agent publishes (and its will lands)."""
        return f"{self.prefix}/node/{normalize_mac(mac)}/report"

    def node_cmd(self, mac: str) -> str:
        """Where the controller sends one node its commands."""
        return f"{self.prefix}/node/{normalize_mac(mac)}/cmd"

    def node_reports(self) -> str:
        """Subscription filter matching every node's report topic."""
        return f"{self.prefix}/node/+/report"

    def report_mac(self, topic: str) -> str:
        """The MAC named by a node report topic; ValueError if it is not one."""
        head = f"{self.prefix}/node/"
        if not (topic.startswith(head) and topic.endswith("/report")):
            raise ValueError(f"not a node report topic (expected {head}<mac>/report)")
        node = topic[len(head) : -len("/report")]
        # Only the canonical form: the ACL grants a node exactly this topic.
        if normalize_mac(node) != node:
            raise ValueError(f"{node!r} in the topic is not a lowercase MAC like {MAC_EXAMPLE}")
        return node


# --- node messages ------------------------------------------------------------


class NodeMessageError(NetrootError):
    """A message on a node report topic was rejected; carries the topic and why."""

    def __init__(self, topic: str, reason: str) -> None:
        self.topic = topic
        self.reason = reason
        # The topic comes from the network: bound what reaches the log line.
        shown = topic if len(topic) <= 200 else topic[:200] + "..."
        super().__init__(f"rejected node message on {shown!r}: {reason}")


def _first_problem(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    if err["type"] == "json_invalid":
        return f"invalid JSON: {err.get('ctx', {}).get('error', 'cannot be parsed')}"
    if err["type"] == "model_type":
        return "payload is not a JSON object"
    msg = str(err["msg"]).removeprefix("Value error, ")
    field = ".".join(str(part) for part in err["loc"])
    return f"{field}: {msg}" if field else msg


def parse_node_message(
    topic: str,
    payload: bytes,
    prefix: str = DEFAULT_PREFIX,
    max_bytes: int = MAX_REPORT_BYTES,
) -> NodeReport:
    """Validate a node report (topic, size, JSON, schema, MAC); NodeMessageError if bad."""
    try:
        topic_mac = Topics(prefix).report_mac(topic)
    except ValueError as exc:
        raise NodeMessageError(topic, str(exc)) from None
    if len(payload) > max_bytes:
        raise NodeMessageError(topic, f"payload of {len(payload)} bytes exceeds {max_bytes}")
    try:
        report = NodeReport.model_validate_json(payload)
    except ValidationError as exc:
        raise NodeMessageError(topic, _first_problem(exc)) from None
    if report.mac != topic_mac:
        # One node must never speak for another, whatever the broker ACL allows.
        raise NodeMessageError(topic, f"mac: {report.mac} does not match the topic's {topic_mac}")
    return report
