"""The canary rollout component: the IO shell around controller.events.canary.

It takes the requests `netroot activate --canary` (or a build of a label
with activation = canary) left in the database, pins the canaries' per-MAC
menus (controller.serve.publish.pin_canaries), makes them stale against the
canary version (so auto_reboot reboots them), and feeds the pure rollout
machine with their reports (a NodeBook observer, inside the report's own
transaction) and with the clock. What the machine decides is carried out
here: the `health` command, the events, and, once decided, promote (the
daemon's one activation path, BuildScheduler.activate) or revert (unpin,
canaries stale against the active version again).

A restart does not resume a running rollout: at start it fails with check
`restart` and its canaries go back to the active version (a rollout's
facts, the reports and health answers, arrive over a broker session the
restart interrupted; starting it again is one command). A rollout decided
but not yet carried out (settled = 0) is carried out at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from controller.core.errors import NetrootError
from controller.core.log import get_logger
from controller.daemon import rolloutstore
from controller.daemon.components import Component
from controller.daemon.context import Context
from controller.daemon.db import Tx
from controller.daemon.rolloutstore import CanaryRequest, RolloutBusy
from controller.events import canary
from controller.events.canary import (
    Abort,
    AskHealth,
    CanaryError,
    Failure,
    HealthReported,
    NodePassed,
    Promote,
    Revert,
    Rollout,
    RolloutInput,
    Seen,
    Tick,
)
from controller.events.node_events import NodeState
from controller.events.node_messages import NodeCommand, NodeReport
from controller.events.payloads import (
    ActivationReason,
    CanaryCheck,
    CanaryFailed,
    CanaryNodePassed,
    CanaryPassed,
    CanaryStarted,
)
from controller.serve import publish
from controller.store import canary as pins
from controller.store import versions as store
from controller.store.layout import label_paths
from controller.store.locking import label_lock

log = get_logger("rollouts")

POLL_S = 0.25  # requests and deadlines are looked at this often

Activate = Callable[[str, str, ActivationReason], Awaitable[str | None]]


class Rollouts(Component):
    """Runs canary rollouts: at most one per label."""

    name = "rollouts"

    def __init__(self, ctx: Context, activate: Activate) -> None:
        self.ctx = ctx
        self.activate = activate
        self.running: dict[str, Rollout] = {}  # label -> its running rollout
        self.decided: dict[str, Rollout] = {}  # id -> passed or failed, not carried out yet
        self._wake = asyncio.Event()
        self._ended = asyncio.Event()  # set, and replaced, whenever a rollout or request ends
        ctx.nodes.observers.append(self.observe)

    async def setup(self) -> None:
        """A rollout a stopped daemon left running fails now (check `restart`)."""
        for rollout, _ in rolloutstore.unfinished(self.ctx.db):
            if rollout.phase == "running":
                detail = (
                    "the controller restarted during the rollout; its canaries go back to"
                    f" {rollout.previous} (run `netroot activate --canary` again)"
                )
                with self.ctx.db.transaction() as tx:
                    self._step(tx, rollout, Abort(at=_now(), check="restart", detail=detail))
            else:
                self.decided[rollout.id] = rollout

    async def run(self) -> None:
        """Start requested rollouts, judge deadlines, carry out decisions."""
        while True:
            self._wake.clear()
            for label, rollout_id in rolloutstore.aborts(self.ctx.db):
                self._abort(label, rollout_id)
            for request in rolloutstore.requests(self.ctx.db):
                await self._start(request)
            if self.running:
                with self.ctx.db.transaction() as tx:
                    for rollout in list(self.running.values()):
                        self._step(tx, rollout, Tick(at=_now()))
            for rollout in list(self.decided.values()):
                await self._settle(rollout)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await self._wake.wait()

    async def ended(self, label: str, version: str) -> str | None:
        """Return once the label has no rollout requested or unfinished (a daemon build's
        activation waits so: the rollout's promotion or revert would undo it); the id of
        the rollout it waited for, if any."""
        found = rolloutstore.pending(self.ctx.db, label)
        if found is None:
            return None
        log.warning(
            "built; its activation waits for the label's canary rollout to end",
            label=label,
            version=version,
            rollout_id=found.id,
            rollout_version=found.version,
        )
        while rolloutstore.pending(self.ctx.db, label) is not None:
            await self._ended.wait()
        return found.id

    def _end(self) -> None:
        """Wake whoever waits in ended()."""
        self._ended.set()
        self._ended = asyncio.Event()

    # --- requests ---------------------------------------------------------------

    def request_build(self, label: str, version: str) -> bool:
        """activation = canary after a daemon build; False: nothing active to compare with."""
        config = self.ctx.config
        paths = label_paths(config, label)
        if store.active_version(paths) is None:
            return False
        try:
            chosen = canary.choose_canaries(
                self.ctx.nodes.nodes.values(), label, config.label(label).canary_count
            )
            request = CanaryRequest(
                id=rolloutstore.new_rollout_id(),
                label=label,
                version=version,
                macs=chosen,
                reason="auto",
                at=_now(),
            )
            rolloutstore.add_request(self.ctx.db, request)
        except (CanaryError, RolloutBusy) as exc:
            self._refused(label, version, rolloutstore.new_rollout_id(), str(exc))
            return True
        self._wake.set()
        return True

    async def _start(self, request: CanaryRequest) -> None:
        config, nodes = self.ctx.config, self.ctx.nodes
        label, version = request.label, request.version
        try:
            timeout = config.label(label).canary_timeout
            previous, live = self._startable(request)
            wanted = pins.Pins(version=version, macs=request.macs, rollout_id=request.id)
            await asyncio.to_thread(self._locked, label, publish.pin_canaries, wanted)
        except (NetrootError, CanaryError, OSError) as exc:
            with self.ctx.db.transaction() as tx:
                rolloutstore.take_request(tx, request.id)
            self._refused(label, version, request.id, str(exc))
            self._end()
            return
        at = _now()
        rollout = canary.start(
            rollout_id=request.id,
            label=label,
            version=version,
            previous=previous,
            reason=request.reason,
            at=at,
            timeout_s=timeout,
            canaries=[live[m] for m in request.macs],
        )
        with self.ctx.db.transaction() as tx:
            rolloutstore.take_request(tx, request.id)
            rolloutstore.put(tx, rollout)
            started = CanaryStarted(
                label=label,
                rollout_id=rollout.id,
                version=version,
                previous=previous,
                macs=rollout.macs,
                reason=request.reason,
                timeout_s=timeout,
                rebooting=nodes.policy(label).auto_reboot,
            )
            self.ctx.emitter.image(tx, started)
            self._track(tx, rollout)
            nodes.pin(tx, label, version, rollout.macs, at)
        log.info("canary rollout started", label=label, version=version, canaries=rollout.macs)

    def _startable(self, request: CanaryRequest) -> tuple[str, dict[str, NodeState]]:
        """The active version and the canaries' states; CanaryError when it cannot start."""
        label, version = request.label, request.version
        previous = store.active_version(label_paths(self.ctx.config, label))
        if previous is None or previous == version:
            raise CanaryError(f"{label}: nothing to try ({version} is active or none is)")
        if label in self.running:
            raise CanaryError(f"{label}: rollout {self.running[label].id} is running")
        live = {n.mac: n for n in canary.live_nodes(self.ctx.nodes.nodes.values(), label)}
        missing = [m for m in request.macs if m not in live]
        if missing:
            raise CanaryError(f"{', '.join(missing)}: not a live node of {label} any more")
        return previous, live

    def _abort(self, label: str, rollout_id: str) -> None:
        """`netroot activate --abort-canary`: a running rollout fails (check aborted) and its
        canaries go back to the active version; a request not started yet goes. A rollout
        decided meanwhile is carried out as decided (the abort came too late)."""
        detail = "aborted by an administrator (netroot activate --abort-canary)"
        running = self.running.get(label)
        stopped = running if running is not None and running.id == rollout_id else None
        waiting = [r for r in rolloutstore.requests(self.ctx.db) if r.id == rollout_id]
        with self.ctx.db.transaction() as tx:
            rolloutstore.take_abort(tx, label)
            if stopped is not None:
                self._step(tx, stopped, Abort(at=_now(), check="aborted", detail=detail))
            for request in waiting:
                rolloutstore.take_request(tx, request.id)
        for request in waiting:
            self._refused(label, request.version, request.id, detail, check="aborted")
        if waiting:
            self._end()
        if waiting or stopped is not None:
            log.warning("canary rollout aborted", label=label, rollout_id=rollout_id)

    def _refused(
        self, label: str, version: str, rollout_id: str, why: str, check: CanaryCheck = "setup"
    ) -> None:
        if check == "setup":
            log.error("canary rollout not started", label=label, version=version, error=why)
        previous = store.active_version(label_paths(self.ctx.config, label))
        if previous is None:
            return
        with self.ctx.db.transaction() as tx:
            failed = CanaryFailed(
                label=label,
                rollout_id=rollout_id,
                version=version,
                previous=previous,
                check=check,
                detail=why[-1024:],
            )
            self.ctx.emitter.image(tx, failed)

    def _locked(self, label: str, action: Callable[..., None], *args: object) -> None:
        paths = label_paths(self.ctx.config, label)
        with label_lock(paths):
            action(self.ctx.config, paths, *args)

    # --- the machine --------------------------------------------------------------

    def observe(self, tx: Tx, report: NodeReport, at: datetime) -> None:
        """A node report, applied in tx: a canary's news for its rollout."""
        label = report.label
        rollout = self.running.get(label) if label is not None else None
        if rollout is None or rollout.canary(report.mac) is None or report.version is None:
            return
        event: RolloutInput
        if report.kind == "health_result":
            event = HealthReported(
                at=at,
                mac=report.mac,
                version=report.version,
                exit_code=report.exit_code or 0,
                output=report.output,
            )
        else:
            event = Seen(at=at, mac=report.mac, version=report.version, boot_id=report.boot_id)
        self._step(tx, rollout, event)

    def _step(self, tx: Tx, rollout: Rollout, event: RolloutInput) -> None:
        new, effects = canary.transition(rollout, event)
        if new == rollout and not effects:
            return
        rolloutstore.put(tx, new)
        self._track(tx, new)
        for effect in effects:
            self._effect(tx, new, effect)

    def _track(self, tx: Tx, rollout: Rollout) -> None:
        """Follow the rollout in memory (undone with tx)."""
        label = rollout.label
        before, was = self.running.get(label), self.decided.get(rollout.id)
        if rollout.phase == "running":
            self.running[label] = rollout
        else:
            self.running.pop(label, None)
            self.decided[rollout.id] = rollout
            tx.after_commit(self._wake.set)

        def undo() -> None:
            self.running.pop(label, None)
            self.decided.pop(rollout.id, None)
            if before is not None:
                self.running[label] = before
            if was is not None:
                self.decided[rollout.id] = was

        tx.on_rollback(undo)

    def _effect(self, tx: Tx, rollout: Rollout, effect: object) -> None:
        emitter = self.ctx.emitter
        common = {"label": rollout.label, "rollout_id": rollout.id, "version": rollout.version}
        match effect:
            case AskHealth(mac, boot_id):
                command = NodeCommand(
                    command="health",
                    id=str(uuid.uuid4()),
                    boot_id=boot_id,
                    version=rollout.version,
                    reason=f"canary rollout {rollout.id}",
                )
                tx.emit(emitter.topics.node_cmd(mac), command.model_dump_json().encode())
                log.info("command", node=mac, command="health", id=command.id)
            case NodePassed(mac, output):
                emitter.image(tx, CanaryNodePassed(**common, mac=mac, output_tail=output))
            case Promote():
                emitter.image(tx, CanaryPassed(**common, macs=rollout.macs))
            case Revert(failure):
                emitter.image(tx, _failed_event(rollout, failure))

    # --- carrying out a decision ------------------------------------------------

    async def _settle(self, rollout: Rollout) -> None:
        if rollout.phase == "passed":
            error = await self.activate(rollout.label, rollout.version, "canary")
            if error is not None:
                log.error("canary promotion failed", label=rollout.label, error=error)
                with self.ctx.db.transaction() as tx:
                    failed, effects = canary.promotion_failed(rollout, error)
                    rolloutstore.put(tx, failed)
                    self._track(tx, failed)
                    for effect in effects:
                        self._effect(tx, failed, effect)
                rollout = failed
        try:
            await asyncio.to_thread(self._locked, rollout.label, publish.unpin_canaries)
        except (NetrootError, OSError) as exc:
            # The pins stay; the next turn tries again.
            log.warning("cannot unpin canaries yet", label=rollout.label, error=str(exc))
            return
        with self.ctx.db.transaction() as tx:
            self.ctx.nodes.unpin(tx, rollout.label, rollout.macs, _now())
            rolloutstore.put(tx, rollout, settled=True)
            self.decided.pop(rollout.id, None)
            tx.on_rollback(lambda: self.decided.__setitem__(rollout.id, rollout))
        self._end()
        log.info("canary rollout finished", label=rollout.label, phase=rollout.phase)


def _failed_event(rollout: Rollout, failure: Failure) -> CanaryFailed:
    return CanaryFailed(
        label=rollout.label,
        rollout_id=rollout.id,
        version=rollout.version,
        previous=rollout.previous,
        check=failure.check,
        mac=failure.mac,
        exit_code=failure.exit_code,
        output_tail=failure.output_tail,
        detail=failure.detail,
    )


def _now() -> datetime:
    return datetime.now(UTC)
