"""Canary rollouts as pure logic: which nodes are canaries, and how a rollout moves on.

A rollout tries one version of a label on a few live nodes (their per-MAC
menus boot it) before the label gets it:

    running --(every canary runs it and its health check exits 0)--> passed
    running --(a canary fails its check, boots another version, or
               canary_timeout runs out; or the controller restarts)--> failed

`transition(rollout, input)` returns the new rollout and the effects the
daemon's shell (controller.daemon.rollouts) carries out: send a canary the
enumerated `health` command, announce a canary that passed, promote the
version (the daemon's own activation), or revert the canaries to the active
version. Inputs carry their time; nothing here reads a clock or the network.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, TypeAlias, assert_never

from pydantic import AwareDatetime, Field

from controller.core.ids import Label, Mac, VersionId
from controller.core.model import Model
from controller.events.node_events import NodeState
from controller.events.payloads import ActivationReason, CanaryCheck, RolloutId, ShortText

LIVE = frozenset({"up", "stale"})  # the agent reports: it can be asked to reboot and check
OUTPUT_TAIL = 1024
# A `health` command can be lost (sent while a freshly booted agent was not yet
# subscribed): a canary still unanswered is asked again on its next report
# (timing, heartbeat) at most this often.
ASK_AGAIN_S = 30.0

RolloutPhase = Literal["running", "passed", "failed"]
CanaryPhase = Literal["waiting", "checking", "passed", "failed"]


class CanaryError(ValueError):
    """The canaries asked for cannot be had (too few live nodes, an unknown MAC...)."""


class Canary(Model):
    """One canary node and how far it got."""

    mac: Mac
    boot_id: str | None = Field(None, description="the boot it ran when the rollout started")
    phase: CanaryPhase = "waiting"
    asked_at: AwareDatetime | None = Field(None, description="when `health` was last sent")


class Failure(Model):
    """Why a rollout failed (what image.canary_failed says)."""

    check: CanaryCheck
    mac: Mac | None = None
    exit_code: int | None = None
    output_tail: ShortText = ""
    detail: ShortText = ""


class Rollout(Model):
    """A rollout as the daemon's database keeps it."""

    id: RolloutId
    label: Label
    version: VersionId
    previous: VersionId
    reason: ActivationReason
    phase: RolloutPhase = "running"
    started_at: AwareDatetime
    timeout_s: float = Field(gt=0)
    canaries: tuple[Canary, ...] = Field(min_length=1)
    failure: Failure | None = None

    @property
    def deadline(self) -> datetime:
        """When every canary must have passed."""
        return self.started_at + timedelta(seconds=self.timeout_s)

    @property
    def macs(self) -> tuple[str, ...]:
        """The canaries' MACs, in the order chosen."""
        return tuple(c.mac for c in self.canaries)

    def canary(self, mac: str) -> Canary | None:
        """The canary with this MAC, if it is one."""
        return next((c for c in self.canaries if c.mac == mac), None)


# --- choosing -----------------------------------------------------------------


def live_nodes(nodes: Iterable[NodeState], label: str) -> list[NodeState]:
    """The label's nodes whose agent reports (up or stale), by MAC."""
    return sorted((n for n in nodes if n.label == label and n.state in LIVE), key=lambda n: n.mac)


def choose_canaries(nodes: Iterable[NodeState], label: str, count: int) -> tuple[str, ...]:
    """The first `count` live nodes of the label by MAC: the same fleet gives the same choice."""
    live = live_nodes(nodes, label)
    if count < 1:
        raise CanaryError(f"--canary: {count} canaries asked for (allowed: 1 or more)")
    if len(live) < count:
        raise CanaryError(
            f"--canary {count}: label {label} has {len(live)} live node(s)"
            " (a canary must be up or stale, reporting through its agent)"
        )
    return tuple(n.mac for n in live[:count])


def check_canaries(nodes: Iterable[NodeState], label: str, macs: Iterable[str]) -> tuple[str, ...]:
    """The MACs given by hand, each a live node of the label, once each."""
    live = {n.mac for n in live_nodes(nodes, label)}
    chosen: list[str] = []
    for mac in macs:
        if mac not in live:
            raise CanaryError(f"--canary-macs: {mac} is not a live node of label {label}")
        if mac not in chosen:
            chosen.append(mac)
    if not chosen:
        raise CanaryError("--canary-macs: no MAC given")
    return tuple(chosen)


def start(
    *,
    rollout_id: str,
    label: str,
    version: str,
    previous: str,
    reason: ActivationReason,
    at: datetime,
    timeout_s: float,
    canaries: Iterable[NodeState],
) -> Rollout:
    """A new running rollout; each canary's current boot is noted (a new boot is awaited)."""
    return Rollout(
        id=rollout_id,
        label=label,
        version=version,
        previous=previous,
        reason=reason,
        started_at=at,
        timeout_s=timeout_s,
        canaries=tuple(Canary(mac=n.mac, boot_id=n.boot_id) for n in canaries),
    )


# --- inputs and effects -------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Seen:
    """A canary's agent reported what it runs (boot, timing or heartbeat report)."""

    at: datetime
    mac: str
    version: str
    boot_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthReported:
    """A canary's agent answered `health` with the check's exit status and output."""

    at: datetime
    mac: str
    version: str
    exit_code: int
    output: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick:
    """Time passed (the deadline is judged on ticks)."""

    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Abort:
    """The rollout cannot go on (the controller restarted, the promotion failed...)."""

    at: datetime
    check: CanaryCheck
    detail: str


RolloutInput: TypeAlias = Seen | HealthReported | Tick | Abort


@dataclass(frozen=True, slots=True)
class AskHealth:
    """Send the canary the enumerated `health` command."""

    mac: str
    boot_id: str | None


@dataclass(frozen=True, slots=True)
class NodePassed:
    """Announce a canary that passed."""

    mac: str
    output_tail: str


@dataclass(frozen=True, slots=True)
class Promote:
    """Every canary passed: activate the version for the label, then unpin the canaries."""


@dataclass(frozen=True, slots=True)
class Revert:
    """Unpin the canaries (their menus follow the active version again) and have them reboot."""

    failure: Failure


RolloutEffect: TypeAlias = AskHealth | NodePassed | Promote | Revert
Result: TypeAlias = tuple[Rollout, list[RolloutEffect]]


def transition(rollout: Rollout, event: RolloutInput) -> Result:
    """The rollout's next state and the effects that enact it; a finished rollout stays put."""
    if rollout.phase != "running":
        return rollout, []
    result: Result
    match event:
        case Seen():
            result = _seen(rollout, event)
        case HealthReported():
            result = _health(rollout, event)
        case Tick():
            result = _tick(rollout, event)
        case Abort():
            result = _fail(rollout, Failure(check=event.check, detail=event.detail[-1024:]))
        case _:
            assert_never(event)
    return result


def tail(text: str, limit: int = OUTPUT_TAIL) -> str:
    """The end of a check's output, at most limit characters."""
    return text[-limit:]


def _with(
    rollout: Rollout, mac: str, phase: CanaryPhase, asked_at: datetime | None = None
) -> Rollout:
    canaries = tuple(
        Canary(mac=c.mac, boot_id=c.boot_id, phase=phase, asked_at=asked_at or c.asked_at)
        if c.mac == mac
        else c
        for c in rollout.canaries
    )
    return Rollout.model_validate({**dict(rollout), "canaries": canaries})


def _fail(rollout: Rollout, failure: Failure) -> Result:
    failed = Rollout.model_validate({**dict(rollout), "phase": "failed", "failure": failure})
    return failed, [Revert(failure)]


def _seen(rollout: Rollout, event: Seen) -> Result:
    canary = rollout.canary(event.mac)
    if canary is None or canary.phase not in ("waiting", "checking"):
        return rollout, []
    if event.version == rollout.version:
        # It boots the canary version: is it healthy? (Asked again if no answer came.)
        again = canary.asked_at is not None and (
            (event.at - canary.asked_at).total_seconds() >= ASK_AGAIN_S
        )
        if canary.phase == "checking" and not again:
            return rollout, []
        asked = _with(rollout, event.mac, "checking", asked_at=event.at)
        return asked, [AskHealth(event.mac, event.boot_id)]
    if canary.phase == "checking":
        return rollout, []  # the answer decides
    if event.boot_id is not None and event.boot_id != canary.boot_id:
        # A new boot, yet not of the version its menu names.
        detail = f"booted {event.version} instead of {rollout.version}"
        return _fail(rollout, Failure(check="version", mac=event.mac, detail=detail))
    return rollout, []  # still the boot from before the rollout: the reboot is to come


def _health(rollout: Rollout, event: HealthReported) -> Result:
    canary = rollout.canary(event.mac)
    if canary is None or canary.phase != "checking" or event.version != rollout.version:
        return rollout, []  # an answer nobody asked for in this rollout
    output = tail(event.output)
    if event.exit_code != 0:
        failure = Failure(
            check="health",
            mac=event.mac,
            exit_code=event.exit_code,
            output_tail=output,
            detail=f"health check exited {event.exit_code}",
        )
        return _fail(rollout, failure)
    passed = _with(rollout, event.mac, "passed")
    effects: list[RolloutEffect] = [NodePassed(event.mac, output)]
    if all(c.phase == "passed" for c in passed.canaries):
        passed = Rollout.model_validate({**dict(passed), "phase": "passed"})
        effects.append(Promote())
    return passed, effects


def _tick(rollout: Rollout, event: Tick) -> Result:
    if event.at < rollout.deadline:
        return rollout, []
    late = next(c for c in rollout.canaries if c.phase != "passed")
    what = {"waiting": "never reported the version", "checking": "never answered `health`"}
    detail = f"{late.mac} {what.get(late.phase, late.phase)} within {rollout.timeout_s:g}s"
    return _fail(rollout, Failure(check="timeout", mac=late.mac, detail=detail))


def promotion_failed(rollout: Rollout, detail: str) -> Result:
    """Every canary passed but the activation failed: the canaries go back all the same."""
    if rollout.phase != "passed":
        return rollout, []
    return _fail(rollout, Failure(check="activation", detail=detail[-1024:]))
