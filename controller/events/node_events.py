"""Node events and the retained node state (the payloads about one node)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Final, Literal, Self

from pydantic import AwareDatetime, Field, model_validator

from controller.core.ids import Label, Mac, VersionId
from controller.core.model import Model
from controller.events.payloads import (
    TYPE_PREFIX,
    BootId,
    IpAddress,
    NodePhase,
    Payload,
    ShortText,
    StaleAction,
)


class RootMount(Model):
    """How the node's / is mounted, as the agent sees it in /proc/mounts."""

    fstype: str = Field(max_length=64, description="fstype of /: overlay, nfs, nfs4...")
    source: ShortText = Field("", description="source of / (server:/path for NFS)")
    lower: ShortText | None = Field(None, description="NFS source under the tmpfs overlay")


# A boot's phases are seconds; a day bounds any figure a node can send.
BootSeconds = Annotated[float, Field(ge=0, le=86400)]


class BootTiming(Model):
    """How long the node's last boot took, as `systemd-analyze time` printed it on the node."""

    firmware_s: BootSeconds | None = Field(None, description="firmware (UEFI only)")
    loader_s: BootSeconds | None = Field(None, description="boot loader (UEFI only)")
    kernel_s: BootSeconds = Field(description="kernel start to the initramfs")
    initrd_s: BootSeconds | None = Field(None, description="initramfs to switch-root")
    userspace_s: BootSeconds = Field(description="switch-root to the default target")
    total_s: BootSeconds = Field(description="the sum systemd-analyze printed")


# A drift listing is bounded: the agent lists at most this many entries (and
# fits them in one report under node_messages.MAX_REPORT_BYTES), then counts.
MAX_DRIFT_ENTRIES: Final = 200
DriftChange = Literal["added", "modified", "deleted"]
FileType = Literal["file", "dir", "symlink", "char", "block", "fifo", "socket"]
DriftCount = Annotated[int, Field(ge=0, le=1_000_000_000)]


class DriftEntry(Model):
    """One path the node's overlay changed against the image."""

    change: DriftChange = Field(
        description="added: not in the image; modified: in both (a directory only when the "
        "node removed and made it again); deleted: in the image, removed on the node"
    )
    type: FileType = Field(description="the node's file type (deleted: the image's)")
    size: int = Field(ge=0, le=2**63 - 1, description="bytes (deleted: the image's file)")
    path: str = Field(min_length=2, max_length=4096, pattern=r"^/", description="on the node")


class Drift(Model):
    """What a node's writable overlay layer changed against its image, as its agent listed it."""

    entries: tuple[DriftEntry, ...] = Field((), max_length=MAX_DRIFT_ENTRIES)
    added: DriftCount = Field(description="every added path, listed or not")
    modified: DriftCount
    deleted: DriftCount
    truncated: bool = Field(description="entries lists only the first of the changes, by path")

    @property
    def total(self) -> int:
        """Every change, listed or not."""
        return self.added + self.modified + self.deleted

    @model_validator(mode="after")
    def _counts_cover_entries(self) -> Self:
        for change in ("added", "modified", "deleted"):
            listed = sum(1 for e in self.entries if e.change == change)
            if listed > getattr(self, change):
                raise ValueError(f"{listed} {change} entries listed, {change} counts fewer")
        if self.truncated != (len(self.entries) < self.total):
            raise ValueError("truncated must say whether entries lists fewer than the counts")
        return self


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
    hostname: str | None = Field(None, max_length=255, description="from the last DHCP lease")
    kernel: str | None = Field(None, max_length=256)
    boot_id: BootId | None = None
    booted_at: AwareDatetime | None = Field(
        None, description="when the controller got the report of this boot"
    )
    root: RootMount | None = None
    boot_timing: BootTiming | None = Field(
        None, description="the agent's systemd-analyze figures for this boot"
    )
    since: AwareDatetime | None = Field(None, description="when the node entered this state")
    last_seen: AwareDatetime | None = None

    @model_validator(mode="after")
    def _action_only_when_stale(self) -> Self:
        return self.checked()

    def checked(self) -> Self:
        """self if its fields agree with each other, else ValueError.

        The model validator, callable on a copy made without validation
        (`trusted_update`) whose field values are already valid.
        """
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
    boot_timing: BootTiming | None = Field(
        None, description="known when the boot had finished at the report (else node.boot_timing)"
    )


class NodeBootTiming(NodeEventData):
    """The node's agent reported how long its current boot took (once the boot finished)."""

    event_type: ClassVar[str] = TYPE_PREFIX + "node.boot_timing"
    boot_id: BootId
    boot_timing: BootTiming


class NodeDiff(NodeEventData):
    """The node's agent listed what its overlay changed against the image (`netroot node diff`)."""

    event_type: ClassVar[str] = TYPE_PREFIX + "node.diff"
    boot_id: BootId | None = None
    command_id: str | None = Field(None, max_length=128, description="the diff command answered")
    diff: Drift


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
