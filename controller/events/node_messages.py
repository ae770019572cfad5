"""The two messages a node exchanges with the controller, and the check of what a node sends.

A node's report and the command it receives are plain JSON objects, not
envelopes: the node agent is a POSIX shell script, and asking it to build or
unwrap envelopes would only add ways to get it wrong.
"""

from __future__ import annotations

from typing import Final, Literal, Self

from pydantic import Field, ValidationError, model_validator

from controller.core.errors import NetrootError
from controller.core.ids import Label, Mac, VersionId
from controller.core.model import Model, first_error
from controller.events.node_events import BootTiming, Drift, RootMount
from controller.events.payloads import BootId, IpAddress, ShortText
from controller.events.topics import DEFAULT_PREFIX, Topics

# A node command the broker still holds after this is dropped (MQTT 5 expiry):
# a reboot meant for an old boot must not run when the node reconnects later.
COMMAND_EXPIRY_S: Final = 300
# A report is a few hundred bytes (a diff_result at most this: the agent fits
# its listing under it); the cap keeps a hostile or broken node from making
# the controller parse megabytes per message.
MAX_REPORT_BYTES = 8192

ReportKind = Literal[
    "boot", "timing", "heartbeat", "remount_result", "diff_result", "health_result", "offline"
]
_REQUIRED_BY_KIND: dict[str, tuple[str, ...]] = {
    "boot": ("label", "version", "boot_id"),
    # the boot report again, once the boot finished, with its timings
    "timing": ("label", "version", "boot_id", "boot_timing"),
    "heartbeat": ("label", "version"),
    "remount_result": ("label", "version", "ok"),
    "diff_result": ("label", "version", "diff"),
    "health_result": ("label", "version", "exit_code"),
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
    boot_timing: BootTiming | None = Field(
        None, description="boot, timing: `systemd-analyze time` (boot: once the boot finished)"
    )
    diff: Drift | None = Field(None, description="diff_result: the overlay's changes")
    command_id: str | None = Field(
        None, max_length=128, description="diff_result, health_result: the command it answers"
    )
    exit_code: int | None = Field(
        None, ge=0, le=255, description="health_result: the image's health check's exit status"
    )
    output: ShortText = Field("", description="health_result: the end of the check's output")

    @model_validator(mode="after")
    def _fields_for_kind(self) -> Self:
        missing = [name for name in _REQUIRED_BY_KIND[self.kind] if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a {self.kind} report needs {', '.join(missing)}")
        return self


class NodeCommand(Model):
    """What the controller publishes on a node's cmd topic (plain JSON, no envelope)."""

    # remount and reboot change the node: the agent obeys them only with its
    # boot id; report and diff only answer (diff lists the overlay's changes);
    # health runs the check baked into the image at build (/etc/netroot/health),
    # never a command the message names.
    command: Literal["remount", "reboot", "report", "diff", "health"]
    id: str = Field(min_length=1, max_length=128)
    boot_id: BootId | None = Field(
        None, description="the boot this is meant for; an agent ignores a command for another boot"
    )
    version: VersionId | None = Field(None, description="the label's active version")
    reason: ShortText = ""


class NodeMessageError(NetrootError):
    """A message on a node report topic was rejected; carries the topic and why."""

    def __init__(self, topic: str, reason: str) -> None:
        self.topic = topic
        self.reason = reason
        # The topic comes from the network: bound what reaches the log line.
        shown = topic if len(topic) <= 200 else topic[:200] + "..."
        super().__init__(f"rejected node message on {shown!r}: {reason}")


def _first_problem(exc: ValidationError) -> str:
    err = first_error(exc)
    if err.kind == "json_invalid":
        return f"invalid JSON: {err.context.get('error', 'cannot be parsed')}"
    if err.kind == "model_type":
        return "payload is not a JSON object"
    return f"{err.field}: {err.problem}" if err.field else err.problem


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
