"""What the node state machine (nodes.py) takes as input: agent reports, DHCP leases,
silence, activations and live edits, each with the time and the label's policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias, assert_never

from controller.events.node_events import BootTiming, Drift, RootMount
from controller.events.node_messages import NodeReport

IPAddress: TypeAlias = str  # canonical text (core.ids.canonical_ip), validated where it came in


@dataclass(frozen=True, slots=True)
class Policy:
    """What the controller may do to a label's stale nodes on its own."""

    auto_remount: bool = True
    auto_reboot: bool = False  # a reboot kills jobs: only when the admin configured it


@dataclass(frozen=True, slots=True, kw_only=True)
class DhcpLease:
    """The DHCP hook saw a lease; firmware means PXE/UEFI asked, i.e. a boot starts."""

    at: datetime
    ip: IPAddress
    firmware: bool
    hostname: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Reported:
    """What every agent report but `offline` tells: what the node runs, and when it said so."""

    at: datetime
    label: str
    version: str
    active_version: str | None
    policy: Policy = Policy()


@dataclass(frozen=True, slots=True, kw_only=True)
class Booted(Reported):
    """The agent's boot report (or its timing report: the same, with the boot's timings)."""

    boot_id: str
    kernel: str | None = None
    ip: IPAddress | None = None
    root: RootMount | None = None
    boot_timing: BootTiming | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(Reported):
    """The agent's periodic report."""

    ip: IPAddress | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RemountResult(Reported):
    """The agent ran `mount -o remount /` and says how it went."""

    ok: bool
    error: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StaleHandle(Reported):
    """The agent found / answering ESTALE."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DiffListed(Reported):
    """The agent answered a diff command with its overlay's changes."""

    boot_id: str | None
    command_id: str | None
    diff: Drift


@dataclass(frozen=True, slots=True, kw_only=True)
class Offline:
    """The node's will fired, or its agent stopped cleanly, or it fell silent."""

    at: datetime
    boot_id: str | None = None
    reason: str = "offline"


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionChange:
    """Something happened to a version of a label: every node of the label may be concerned."""

    at: datetime
    label: str
    version: str
    policy: Policy = Policy()


@dataclass(frozen=True, slots=True, kw_only=True)
class Activation(VersionChange):
    """A version of the label was activated (or rolled back to)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveEdit(VersionChange):
    """`netroot shell --live` changed a version's tree in place."""


NodeInput: TypeAlias = (
    DhcpLease
    | Booted
    | Heartbeat
    | RemountResult
    | StaleHandle
    | DiffListed
    | Offline
    | Activation
    | LiveEdit
)


def report_input(
    report: NodeReport, *, at: datetime, active_version: str | None, policy: Policy
) -> NodeInput:
    """The state-machine input for a validated agent report."""
    if report.kind == "offline":
        return Offline(at=at, boot_id=report.boot_id, reason="agent went offline")
    # NodeReport's validator guarantees the fields each kind needs; the
    # `or ""` only satisfies the type checker.
    facts: dict[str, Any] = {
        "at": at,
        "label": report.label or "",
        "version": report.version or "",
        "active_version": active_version,
        "policy": policy,
    }
    match report.kind:
        case "boot" | "timing":
            return Booted(
                **facts,
                boot_id=report.boot_id or "",
                kernel=report.kernel,
                ip=report.ip,
                root=report.root,
                boot_timing=report.boot_timing,
            )
        case "heartbeat" if report.stale_handle:
            return StaleHandle(**facts)
        case "heartbeat" | "health_result":  # a health result is a sign of life too
            return Heartbeat(**facts, ip=report.ip)
        case "remount_result":
            return RemountResult(**facts, ok=bool(report.ok), error=report.error)
        case "diff_result" if report.diff is not None:  # the validator requires it
            return DiffListed(
                **facts, boot_id=report.boot_id, command_id=report.command_id, diff=report.diff
            )
        case "diff_result":
            raise ValueError("a diff_result report needs diff")
        case _:
            assert_never(report.kind)
