"""The node state machine of docs/design.md §10, as a pure function.

    unknown -> dhcp -> booting -> up (current) <-> stale(reboot|remount) -> lost

`transition(state, input)` returns the new state and the effects the shell
must carry out (publish events, publish the retained state, send a command).
Inputs carry everything the decision needs (the time, the label's active
version and policy), so nothing here reads a clock, a database or the network.

Why a node is stale is derived from its state rather than stored apart:
- action reboot and version != active_version: it runs an outdated version;
  reporting the active version (after a boot, or a rollback) clears it;
- action reboot and version == active_version: a remount failed, the root is
  broken; only a new boot (or a successful remount) clears it;
- action remount: its tree changed in place or / went stale; a successful
  remount or a new boot clears it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias, TypeVar, assert_never

from controller.events.node_events import (
    NodeBooted,
    NodeBootTiming,
    NodeCurrent,
    NodeDhcp,
    NodeDiff,
    NodeEventData,
    NodeLost,
    NodeRemounted,
    NodeRemountRequested,
    NodeStale,
    NodeState,
)
from controller.events.node_inputs import (
    Activation,
    Booted,
    DhcpLease,
    DiffListed,
    Heartbeat,
    LiveEdit,
    NodeInput,
    Offline,
    RemountResult,
    Reported,
    StaleHandle,
)
from controller.events.node_messages import NodeCommand
from controller.events.payloads import StaleAction

RUNNING = frozenset({"up", "stale"})  # the agent reported, so we know what the node runs


# --- effects ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishEvent:
    """Publish a node event on the node's events topic."""

    data: NodeEventData

    @property
    def event_type(self) -> str:
        """The CloudEvents type of the data."""
        return self.data.event_type


@dataclass(frozen=True, slots=True)
class PublishState:
    """Publish the node's retained state."""

    state: NodeState


@dataclass(frozen=True, slots=True)
class SendCommand:
    """Send the node a command on its cmd topic."""

    command: StaleAction
    boot_id: str | None
    version: str | None
    reason: str

    def message(self, command_id: str) -> NodeCommand:
        """The message to publish, under a caller-chosen id."""
        return NodeCommand(
            command=self.command,
            id=command_id,
            boot_id=self.boot_id,
            version=self.version,
            reason=self.reason,
        )


Effect: TypeAlias = PublishEvent | PublishState | SendCommand
Result: TypeAlias = tuple[NodeState, list[Effect]]
E = TypeVar("E", bound=NodeEventData)
Fact: TypeAlias = tuple[type[NodeEventData], dict[str, Any]]


# --- the machine --------------------------------------------------------------


def transition(state: NodeState, event: NodeInput) -> Result:
    """The node's next state and the effects that announce and enact it."""
    result: Result
    match event:
        case DhcpLease():
            result = _dhcp(state, event)
        case Booted():
            result = _booted(state, event)
        case Heartbeat():
            result = _settle(state, event, _facts(state, event, ip=event.ip))
        case RemountResult():
            result = _remount_result(state, event)
        case StaleHandle():
            result = _stale_handle(state, event)
        case DiffListed():
            result = _diff_listed(state, event)
        case Offline():
            result = _offline(state, event)
        case Activation():
            result = _activation(state, event)
        case LiveEdit():
            result = _live_edit(state, event)
        case _:
            assert_never(event)
    return result


def versions_in_use(nodes: Iterable[NodeState], label: str) -> set[str]:
    """Versions of the label that a live (not lost) node runs: garbage collection must keep them."""
    return {
        n.version for n in nodes if n.label == label and n.state != "lost" and n.version is not None
    }


def _replace(node: NodeState, /, **changes: Any) -> NodeState:
    """node with changes, checked against the model's own rules.

    Validated once, at the boundary: what the machine takes from an input was
    validated where the input was made (NodeReport for an agent's report, the
    store for versions), and what it sets itself (phase, action, times) has its
    field's type. So the copy is not validated field by field again (in a boot
    storm that was a third of the ingest; the IP alone was parsed four times);
    the model validator (`NodeState.checked`) runs on every copy. A reason the
    machine composes (it may quote what a node sent) is validated as before.
    """
    reason = changes.get("reason")
    if reason and reason != node.reason:
        return _validated(node, **changes)
    return node.trusted_update(**changes).checked()


def _validated(node: NodeState, /, **changes: Any) -> NodeState:
    """node with changes, every field validated (inputs not from a node report: DHCP)."""
    return NodeState.model_validate({**dict(node), **changes})


def _event(cls: type[E], state: NodeState, **extra: Any) -> E:
    # Every value is the new state's (checked by _replace) or an input's (validated
    # at the boundary): built without validating them again, as _replace does.
    return cls.trusted(
        mac=state.mac, state=state.state, label=state.label, version=state.version, **extra
    )


def _finish(old: NodeState, new: NodeState, effects: list[Effect]) -> Result:
    """Add the retained state when something a subscriber sees has changed."""
    # last_seen moves on every heartbeat; republishing it would flood the broker.
    if {**old.__dict__, "last_seen": None} != {**new.__dict__, "last_seen": None}:
        effects.insert(_first_command(effects), PublishState(new))
    return new, effects


def _first_command(effects: list[Effect]) -> int:
    # State before commands, so a subscriber already sees why a node is told to act.
    return next((i for i, e in enumerate(effects) if isinstance(e, SendCommand)), len(effects))


@dataclass(frozen=True, slots=True)
class _Facts:
    """What a report tells, plus why the node would still be stale."""

    state: NodeState  # the old state with the reported facts folded in
    remount_pending: bool
    broken: bool


def _told(state: NodeState, event: Reported, **changes: Any) -> NodeState:
    """The state with what the agent reported folded in."""
    return _replace(
        state,
        label=event.label,
        version=event.version,
        active_version=event.active_version,
        last_seen=event.at,
        **changes,
    )


def _facts(state: NodeState, event: Reported, **changes: Any) -> _Facts:
    running = state.state in RUNNING
    return _Facts(
        _told(state, event, **{k: v for k, v in changes.items() if v is not None}),
        remount_pending=running and state.action == "remount",
        broken=running and state.action == "reboot" and state.version == state.active_version,
    )


def _settle(
    old: NodeState,
    event: Reported | Activation | LiveEdit,
    facts: _Facts,
    *,
    reason: str = "",
    fact: Fact | None = None,
) -> Result:
    """Put the node in up or stale from its facts, announcing a change of either.

    fact is an event about what happened (booted, remounted), announced first
    and, like every event, with the state the node ends up in.
    """
    cur = facts.state
    outdated = cur.active_version is not None and cur.version != cur.active_version
    action: StaleAction | None = None
    if outdated or facts.broken:
        action = "reboot"
        if outdated:
            reason = f"runs {cur.version}, active is {cur.active_version}"
    elif facts.remount_pending:
        action = "remount"
    if action is None:
        reason = ""
    elif old.state == "stale" and old.action == action:
        reason = reason or old.reason
    phase = "stale" if action else "up"
    since = _since(old, phase, action, event)
    new = _replace(cur, state=phase, action=action, reason=reason, since=since)

    effects: list[Effect] = []
    if fact is not None:
        effects.append(PublishEvent(_event(fact[0], new, **fact[1])))
    if action is None:
        if old.state != "up":
            effects.append(PublishEvent(_event(NodeCurrent, new)))
        return _finish(old, new, effects)
    if old.state == "stale" and old.action == action:
        return _finish(old, new, effects)  # already announced, already commanded
    wanted = event.policy.auto_remount if action == "remount" else event.policy.auto_reboot
    stale = _event(
        NodeStale,
        new,
        action=action,
        active_version=new.active_version,
        reason=reason,
        commanded=wanted,
    )
    effects.append(PublishEvent(stale))
    if wanted and action == "remount":
        effects.append(PublishEvent(_event(NodeRemountRequested, new, reason=reason)))
    if wanted:
        effects.append(SendCommand(action, new.boot_id, new.active_version, reason))
    return _finish(old, new, effects)


def _since(
    old: NodeState, phase: str, action: str | None, event: NodeInput | Reported
) -> datetime | None:
    unchanged = old.state == phase and old.action == action
    return old.since if unchanged else event.at


def _dhcp(state: NodeState, event: DhcpLease) -> Result:
    if event.firmware:
        # The firmware asks: whatever ran before is gone, a new boot begins.
        phase = "dhcp"
        changes: dict[str, Any] = dict.fromkeys(
            ("version", "kernel", "root", "booted_at", "boot_timing")
        )
    elif state.state in {"unknown", "dhcp", "lost"}:
        phase, changes = "booting", {}
    else:
        phase, changes = state.state, {}  # a renewal from a running system
    new = _validated(
        state,
        state=phase,
        action=state.action if phase == "stale" else None,
        reason=state.reason if phase == state.state else "",
        ip=event.ip,
        hostname=event.hostname or state.hostname,
        last_seen=event.at,
        since=_since(state, phase, state.action if phase == "stale" else None, event),
        **changes,
    )
    effects: list[Effect] = []
    if new.state != state.state or new.ip != state.ip:
        dhcp = _event(NodeDhcp, new, ip=event.ip, firmware=event.firmware, hostname=event.hostname)
        effects.append(PublishEvent(dhcp))
    return _finish(state, new, effects)


def _booted(state: NodeState, event: Booted) -> Result:
    timing = event.boot_timing
    if state.state in RUNNING and state.boot_id == event.boot_id:
        # The agent restarted within the same boot (nothing was remounted or
        # rebooted), or it tells the timings of a boot that has now finished.
        facts = _facts(state, event, ip=event.ip, boot_timing=timing)
        timed: Fact | None = None
        if timing is not None and timing != state.boot_timing:
            timed = (NodeBootTiming, {"boot_id": event.boot_id, "boot_timing": timing})
        return _settle(state, event, facts, fact=timed)
    # A new boot (or the timing report of a boot whose boot report was missed):
    # the previous boot's timings go with it.
    cur = _told(
        state,
        event,
        boot_id=event.boot_id,
        booted_at=event.at,
        kernel=event.kernel,
        ip=event.ip or state.ip,
        root=event.root,
        # kept when the controller had marked the node lost within this same boot
        boot_timing=timing or (state.boot_timing if state.boot_id == event.boot_id else None),
    )
    booted: Fact = (
        NodeBooted,
        {
            "boot_id": event.boot_id,
            "kernel": event.kernel,
            "ip": cur.ip,
            "root": event.root,
            "boot_timing": cur.boot_timing,
        },
    )
    # A fresh boot mounted a fresh root: nothing from the previous boot is pending.
    facts = _Facts(cur, remount_pending=False, broken=False)
    return _settle(state, event, facts, fact=booted)


def _remount_result(state: NodeState, event: RemountResult) -> Result:
    facts = _facts(state, event)
    if event.ok:
        cleared = _Facts(facts.state, remount_pending=False, broken=False)
        return _settle(state, event, cleared, fact=(NodeRemounted, {}))
    if facts.remount_pending:
        # The old mount may be half gone now; only a reboot gives a sound root.
        broken = _Facts(facts.state, remount_pending=False, broken=True)
        return _settle(state, event, broken, reason=f"remount failed: {event.error}".rstrip(": "))
    return _settle(state, event, facts)  # nobody asked for it; nothing to conclude


def _stale_handle(state: NodeState, event: StaleHandle) -> Result:
    facts = _facts(state, event)
    pending = _Facts(facts.state, remount_pending=True, broken=facts.broken)
    return _settle(state, event, pending, reason="stale file handle on /")


def _diff_listed(state: NodeState, event: DiffListed) -> Result:
    # A sign of life like a heartbeat, and the listing announced as an event.
    listed: Fact = (
        NodeDiff,
        {"boot_id": event.boot_id, "command_id": event.command_id, "diff": event.diff},
    )
    return _settle(state, event, _facts(state, event), fact=listed)


def _offline(state: NodeState, event: Offline) -> Result:
    if state.state in {"dhcp", "booting", "lost"}:
        # A will fires after the keepalive runs out, when a reset node is often
        # already booting again: it speaks for the previous boot.
        return state, []
    if event.boot_id and state.boot_id and event.boot_id != state.boot_id:
        return state, []  # the will of an older session, delivered late
    new = _replace(state, state="lost", action=None, reason=event.reason, since=event.at)
    return _finish(state, new, [PublishEvent(_event(NodeLost, new, reason=event.reason))])


def _activation(state: NodeState, event: Activation) -> Result:
    if state.state not in RUNNING or state.label != event.label:
        return state, []  # a booting node is judged by its boot report
    cur = _replace(state, active_version=event.version)
    facts = _Facts(
        cur,
        remount_pending=state.action == "remount",
        broken=state.action == "reboot" and state.version == state.active_version,
    )
    return _settle(state, event, facts)


def _live_edit(state: NodeState, event: LiveEdit) -> Result:
    if state.state not in RUNNING or state.label != event.label or state.version != event.version:
        return state, []
    facts = _Facts(
        state,
        remount_pending=True,
        broken=state.action == "reboot" and state.version == state.active_version,
    )
    return _settle(state, event, facts, reason=f"{event.version} was changed in place")
