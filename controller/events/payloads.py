"""The payloads of netroot's events: the field types they share, the base model, image and
controller events (node events are in node_events.py).

Everything the controller publishes is a CloudEvents 1.0 structured JSON
envelope (envelope.py) whose `data` is one of these models.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Final, Literal

from pydantic import AwareDatetime, BeforeValidator, Field, WithJsonSchema

from controller.core.ids import Label, Mac, ServerName, VersionId, canonical_ip
from controller.core.model import Model

TYPE_PREFIX = "org.netroot."
# Schema ids are URNs: names, not addresses; `netroot schema` is where the text is.
SCHEMA_ID_PREFIX: Final = "urn:netroot:schema:"

# /proc/sys/kernel/random/boot_id: a lowercase UUID.
BootId = Annotated[str, Field(pattern=r"^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$")]
ShortText = Annotated[str, Field(max_length=1024)]
# An address as canonical text (core.ids.canonical_ip), documented with the
# standard JSON Schema formats.
IpAddress = Annotated[
    str,
    BeforeValidator(canonical_ip),
    WithJsonSchema({"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}),
]
BuildId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="names the build log: <state_dir>/logs/<label>/<build_id>.log",
    ),
]
ActivationReason = Literal["auto", "cli", "rollback", "canary", "replica"]
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
        "cli: `netroot activate` or `build --activate` by hand; canary: every canary of a "
        "rollout passed (image.canary_passed); rollback is reserved (a rollback is "
        "announced as image.rolled_back)",
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


# --- canary rollouts (issue 12): a version tried on a few nodes before the label --------

CanaryCheck = Literal["version", "health", "timeout", "restart", "activation", "setup", "aborted"]
RolloutId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


class CanaryEventData(ImageEventData):
    """Fields every event of a canary rollout carries."""

    rollout_id: RolloutId
    version: VersionId = Field(description="the version tried on the canaries")


class CanaryStarted(CanaryEventData):
    """The canaries' per-MAC menus now boot the version; they are asked to reboot (auto_reboot)."""

    event_type: ClassVar[str] = TYPE_PREFIX + "image.canary_started"
    previous: VersionId = Field(description="the label's active version, kept for the others")
    macs: tuple[Mac, ...] = Field(min_length=1, max_length=1000)
    reason: ActivationReason = Field(description="cli: `activate --canary`; auto: a build")
    timeout_s: float = Field(gt=0, description="canary_timeout: every canary passes within it")
    rebooting: bool = Field(description="auto_reboot: the canaries were asked to reboot")


class CanaryNodePassed(CanaryEventData):
    """One canary runs the version and its health check exited 0."""

    event_type: ClassVar[str] = TYPE_PREFIX + "image.canary_node_passed"
    mac: Mac
    output_tail: ShortText = ""


class CanaryPassed(CanaryEventData):
    """Every canary passed: the version is activated for the label (image.activated follows)."""

    event_type: ClassVar[str] = TYPE_PREFIX + "image.canary_passed"
    macs: tuple[Mac, ...] = Field(min_length=1, max_length=1000)


class CanaryFailed(CanaryEventData):
    """A canary failed or the rollout could not finish: every canary goes back to `previous`."""

    event_type: ClassVar[str] = TYPE_PREFIX + "image.canary_failed"
    previous: VersionId = Field(description="the active version the canaries go back to")
    check: CanaryCheck = Field(
        description="version: a canary booted another version; health: its check failed; "
        "timeout: canary_timeout ran out; restart: the controller restarted mid-rollout; "
        "activation: the promotion itself failed; setup: the rollout could not start (a canary "
        "not live, a rollout already running, menus not rendered); aborted: an administrator "
        "stopped it (`netroot activate LABEL --abort-canary`)"
    )
    mac: Mac | None = Field(None, description="the canary that failed, when one did")
    exit_code: int | None = Field(None, description="health: the check's exit status")
    output_tail: ShortText = Field("", description="health: the end of the check's output")
    detail: ShortText = ""


# --- replica boot servers (issue 12): versions copied from the primary -------------


class ReplicaEventData(ImageEventData):
    """Fields every event of a replica about one version carries."""

    replica: ServerName = Field(description="the replica's [replication] name")
    version: VersionId


class ImageReplicated(ReplicaEventData):
    """The replica holds the version, verified against the primary's manifest (its ack)."""

    event_type: ClassVar[str] = TYPE_PREFIX + "image.replicated"
    fetched_files: int = Field(ge=0, description="files fetched from the primary")
    fetched_bytes: int = Field(ge=0)
    linked_files: int = Field(ge=0, description="files hard-linked from versions it held")
    duration_s: float = Field(ge=0, description="fetch, check and commit")
    held: bool = Field(False, description="it held the version already: nothing fetched")


class ImageReplicationFailed(ReplicaEventData):
    """The replica could not copy the version; it keeps serving what it has and tries again."""

    event_type: ClassVar[str] = TYPE_PREFIX + "image.replication_failed"
    error: ShortText
    retry_s: float = Field(ge=0, description="the next attempt comes after this many seconds")


class ReplicaLabel(Model):
    """One label as a replica serves it."""

    label: Label
    active: VersionId | None = Field(None, description="the version the replica's nodes boot")
    primary_active: VersionId | None = Field(None, description="the primary's, as last heard")
    behind: bool = Field(description="active differs from primary_active")
    error: ShortText = Field("", description="why it is behind, when an attempt failed")


class ReplicaState(Payload):
    """Retained: what a replica serves, and whether it keeps up with the primary."""

    event_type: ClassVar[str] = TYPE_PREFIX + "replica.state"
    replica: ServerName
    primary_url: ShortText
    labels: tuple[ReplicaLabel, ...] = Field((), max_length=1000)


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


# --- controller --------------------------------------------------------------


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
