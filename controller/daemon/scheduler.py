"""The build scheduler: one build per label at a time, a bounded number of labels at once.

Requests are rows in the builds table (state `queued`, at most one per label),
so an edit that arrives while the label builds merges into exactly one
follow-up, and a queue survives a restart. Each build is a child process
(`netroot build LABEL --build-id ID --json`), so cancelling it (SIGTERM of
the daemon) kills the whole build process group. The child announces its own
start and end, as any CLI build does; it dies with the daemon (proc's
parent-death signal), and a build that committed before that is adopted as
succeeded at the next start, never built again. At start it also queues the
labels whose inputs changed while no daemon watched them (controller.daemon.catchup).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import controller
from controller.build.pipeline import new_build_id
from controller.core import proc
from controller.core.errors import NetrootError
from controller.core.failure import Failure, FailureReport
from controller.core.log import get_logger
from controller.daemon.announce import manifest_or_none, record_success, summary
from controller.daemon.builds import BuildRow
from controller.daemon.catchup import stale_labels
from controller.daemon.components import Component
from controller.daemon.context import Context
from controller.daemon.images import LabelBusy
from controller.events.payloads import ActivationReason, BuildFailed, BuildKind, BuildSucceeded
from controller.store import versions as store
from controller.store.layout import label_paths
from controller.store.manifest import Manifest

log = get_logger("scheduler")

MAX_ERROR = 1024
MAX_TAIL = 16384
CATCH_UP_REASON = "inputs changed while the controller was stopped"


def child_env() -> dict[str, str]:
    """Extra environment of a child `netroot`: the package must import from a checkout too."""
    env = {"PYTHONPATH": str(Path(controller.__file__).resolve().parent.parent)}
    if "NETROOT_FAILPOINT" in os.environ:
        # The crash tests kill the daemon's children at named points too.
        env["NETROOT_FAILPOINT"] = os.environ["NETROOT_FAILPOINT"]
    return env


def netroot_argv(ctx: Context, *args: str) -> list[str]:
    """argv of a child `netroot` command on the daemon's config file."""
    config = ["--config", str(ctx.config_path)] if ctx.config_path else []
    return [sys.executable, "-m", "controller", *config, "--json", *args]


def child_failure(done: proc.Completed) -> Failure:
    """Why a child `netroot --json` failed: the report it printed on stdout, or, when it
    printed none (it crashed), its last line on stderr."""
    reported = FailureReport.parse(done.stdout)
    if reported is not None:
        return reported.error
    said = [line for line in done.stderr.splitlines() if line.strip()]
    message = said[-1] if said else f"exited with status {done.returncode}"
    return Failure(kind="process", step=None, message=message, log_tail=proc.tail(done.stderr))


class BuildScheduler(Component):
    """Runs queued builds, activates per policy, and keeps the database in step with the store."""

    name = "scheduler"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.running: dict[str, str] = {}  # label -> build id
        self._wake = asyncio.Event()
        # Set once the start-up check of inputs has queued what it found: readiness waits
        # for it, so an edit made after READY=1 is the watcher's alone (one build, not two).
        self.caught_up = asyncio.Event()
        self.builds_started = 0
        self._adopted: list[tuple[str, Manifest]] = []  # committed while we were away
        # activation = canary: asks the rollouts for one; False when none could start
        self.canary: Callable[[str, str], bool] | None = None
        # (label, the build's version): returns once the label has no canary rollout
        # requested or unfinished; the id of the rollout it waited for, if it had to
        self.rollout_ended: Callable[[str, str], Awaitable[str | None]] | None = None
        # replicas_required: returns once enough replicas hold the version (or it timed out)
        self.replicas_held: Callable[[str, str], Awaitable[None]] | None = None

    def request(self, label: str, kind: BuildKind, reason: str, paths: Iterable[str] = ()) -> None:
        """Queue a build (merged into the label's queued one, if any)."""
        if self.ctx.config.replication.role == "replica":
            log.info("a replica does not build; its primary does", label=label, reason=reason)
            return
        if label not in self.ctx.config.labels:
            log.warning("not building an unconfigured label", label=label)
            return
        with self.ctx.db.transaction() as tx:
            build_id = tx.queue_build(new_build_id(), label, kind, reason, paths)
        log.info("build queued", label=label, kind=kind, build_id=build_id, reason=reason)
        self._wake.set()

    def requeue_interrupted(self) -> None:
        """At start-up: a build a killed daemon left running was committed (adopted) or not
        (failed, and it runs again)."""
        for row in self.ctx.db.builds(states=["running"]):
            manifest = self._settle(row, "the controller stopped during the build")
            if manifest is not None:
                self._adopted.append((row.label, manifest))

    def _settle(self, row: BuildRow, error: str) -> Manifest | None:
        """A build whose child is gone: announce its commit, or fail it and queue it again."""
        current = self.ctx.db.build(row.build_id)
        if current is not None and current.state not in ("queued", "running"):
            return None  # the child recorded and announced its end itself
        manifest = self._adopt(row)
        if manifest is None:
            self._interrupted(row, error)
        return manifest

    def _adopt(self, row: BuildRow) -> Manifest | None:
        """If the build committed but its child died before saying so, announce it now."""
        current = self.ctx.db.build(row.build_id)
        if current is not None and current.state not in ("queued", "running"):
            return None
        manifest = self._committed(row)
        if manifest is None:
            return None
        kind = current.kind if current is not None else row.kind
        started = current.started_at if current and current.started_at else row.queued_at
        with self.ctx.db.transaction() as tx:
            tx.finish_build(row.build_id, "succeeded", version=manifest.version)
            tx.record_version(row.label, summary(manifest, kind))
            succeeded = BuildSucceeded(
                label=row.label,
                build_id=row.build_id,
                kind=kind,
                version=manifest.version,
                duration_s=max(0.0, manifest.created.timestamp() - started),
                adopted=True,
            )
            self.ctx.emitter.image(tx, succeeded, manifest.created)
        log.warning(
            "adopted a build committed while unwatched",
            label=row.label,
            build_id=row.build_id,
            version=manifest.version,
        )
        return manifest

    def _committed(self, row: BuildRow) -> Manifest | None:
        """The version this build committed, found by the build id in its manifest."""
        if row.label not in self.ctx.config.labels:
            return None
        paths = label_paths(self.ctx.config, row.label)
        try:
            versions = store.version_ids(paths)
        except OSError:
            return None
        for version in reversed(versions):
            manifest = manifest_or_none(paths, version)
            if manifest is not None and manifest.build_id == row.build_id:
                return manifest
        return None

    def _interrupted(self, row: BuildRow, error: str) -> None:
        duration = max(0.0, time.time() - (row.started_at or row.queued_at))
        with self.ctx.db.transaction() as tx:
            tx.finish_build(row.build_id, "interrupted", step="interrupted", error=error)
            failed = BuildFailed(
                label=row.label,
                build_id=row.build_id,
                kind=row.kind,
                step="interrupted",
                error=f"{error}; it runs again when the controller starts",
                duration_s=duration,
            )
            self.ctx.emitter.image(tx, failed)
            tx.queue_build(new_build_id(), row.label, row.kind, "interrupted build", row.paths)
        log.warning("build interrupted, queued again", label=row.label, build_id=row.build_id)

    async def run(self) -> None:
        """Start what may start, whenever a request or a finished build wakes it.

        Changes of the store by hand (activate, rollback, gc) reach the database
        through controller.daemon.imagewatch, not through this loop.
        """
        async with asyncio.TaskGroup() as builds:
            for label, manifest in self._adopted:
                builds.create_task(self._after_success(label, manifest), name=f"adopt-{label}")
            self._adopted.clear()
            await self.catch_up()
            self.caught_up.set()
            while True:
                self._wake.clear()
                self._start(builds)
                await self._wake.wait()

    async def catch_up(self) -> None:
        """Queue a build of each label whose inputs changed while no daemon watched them."""
        # A queued build (an interrupted one, queued again) builds the current inputs
        # and keeps its own reason.
        queued = {row.label for row in self.ctx.db.builds(states=["queued"])}
        stale = await asyncio.to_thread(stale_labels, self.ctx.config, queued)
        for label, kind in stale.items():
            self.request(label, kind, CATCH_UP_REASON)
        log.info("start-up check of inputs", changed=sorted(stale))

    def reconcile_all(self) -> None:
        """Announce what changed in the store of every label (activations by hand, gc)."""
        for label in sorted(self.ctx.config.labels):
            self.reconcile(label)

    def reconcile(self, label: str) -> None:
        """Announce what changed in the label's store."""
        try:
            self.ctx.images.reconcile(self.ctx.config, label)
        except LabelBusy:
            log.debug("label busy; reconciled later", label=label)
        except (NetrootError, OSError) as exc:
            log.warning("cannot read the store", label=label, error=str(exc))

    def _start(self, builds: asyncio.TaskGroup) -> None:
        for row in self.ctx.db.builds(states=["queued"]):
            if row.label in self.running:
                continue  # the follow-up waits for the running build
            if len(self.running) >= self.ctx.config.max_parallel_builds:
                return
            if row.label not in self.ctx.config.labels:
                with self.ctx.db.transaction() as tx:
                    tx.finish_build(row.build_id, "failed", step="queue", error="label removed")
                continue
            self.running[row.label] = row.build_id
            self.builds_started += 1
            builds.create_task(self._build(row), name=f"build-{row.label}")

    async def _build(self, row: BuildRow) -> None:
        try:
            manifest = await self._run_build(row)
            if manifest is not None:
                await self._after_success(row.label, manifest)
        finally:
            self.running.pop(row.label, None)
            self._wake.set()

    async def _run_build(self, row: BuildRow) -> Manifest | None:
        ctx = self.ctx
        # The child marks the row running and announces build.started itself.
        args = [
            "build", row.label, "--build-id", row.build_id,
            *(["--overlays-only"] if row.kind == "overlay" else []),
        ]  # fmt: skip
        t0 = time.monotonic()
        try:
            done = await proc.arun(netroot_argv(ctx, *args), env=child_env(), check=False)
        except asyncio.CancelledError:
            self._settle(row, "the controller stopped during the build")
            raise
        if done.returncode != 0:
            adopted = self._adopt(row)  # killed after its commit: built all the same
            if adopted is not None:
                return adopted
            failed = child_failure(done)
            # A failure before any step (a bad recipe, a busy label) is the build's own.
            step = failed.step or "build"
            log.info("child build failed", label=row.label, kind=failed.kind, step=step)
            tail = failed.log_tail or proc.tail(done.stderr)
            self._failed(row, step, failed.message, tail, time.monotonic() - t0)
            return None
        try:
            manifest = Manifest.model_validate(json.loads(done.stdout)["version"])
        except (ValueError, KeyError, TypeError) as exc:
            error = f"unreadable build output: {exc}"
            self._failed(row, "output", error, "", time.monotonic() - t0)
            return None
        duration = time.monotonic() - t0
        current = ctx.db.build(row.build_id)
        if current is not None and current.state == "succeeded":
            return manifest  # announced by the child
        with ctx.db.transaction() as tx:
            record_success(tx, ctx.emitter, row, manifest, duration)
        return manifest

    def _failed(self, row: BuildRow, step: str, error: str, tail: str, duration: float) -> None:
        current = self.ctx.db.build(row.build_id)
        if current is not None and current.state == "failed":
            log.error("build failed; the active version stays", label=row.label, step=current.step)
            return  # announced by the child
        with self.ctx.db.transaction() as tx:
            tx.finish_build(row.build_id, "failed", step=step, error=error)
            failed = BuildFailed(
                label=row.label,
                build_id=row.build_id,
                kind=row.kind,
                step=step[:128],
                error=error[:MAX_ERROR],
                log_tail=tail[-MAX_TAIL:],
                duration_s=duration,
            )
            self.ctx.emitter.image(tx, failed)
        log.error("build failed; the active version stays", label=row.label, step=step)

    async def _after_success(self, label: str, manifest: Manifest) -> None:
        config = self.ctx.config
        policy = config.labels[label].activation if label in config.labels else "manual"
        if policy == "canary" and self.canary is not None and self.canary(label, manifest.version):
            log.info("built; canary rollout requested", label=label, version=manifest.version)
        elif policy in ("auto", "canary"):  # canary with nothing to compare to: as auto
            if not await self._after_rollout(label, manifest.version):
                self.reconcile(label)
                return
            error = await self.activate(label, manifest.version, "auto")
            if error is not None:
                log.error(
                    "activation failed; the active version stays",
                    label=label,
                    version=manifest.version,
                    error=error,
                )
            else:
                # The child wrote the events into the outbox; the log says so too,
                # for an operator without a broker.
                log.info("built and activated", label=label, version=manifest.version)
            return  # activate() reconciled
        else:
            log.info("built; activation is manual", label=label, version=manifest.version)
        self.reconcile(label)

    async def _after_rollout(self, label: str, version: str) -> bool:
        """activation = auto waits for the label's canary rollout to end, so neither undoes
        the other (its promotion would replace the build, its revert pin the canaries to a
        version no longer active); False: a newer version became active meanwhile.

        The label's next build waits too (it is still this build's turn).
        """
        if self.rollout_ended is None:
            return True
        ended = await self.rollout_ended(label, version)
        if ended is None:
            return True
        active = store.active_version(label_paths(self.ctx.config, label))
        if active is not None and active > version:
            log.warning(
                "built; not activated: a newer version became active during the rollout",
                label=label,
                version=version,
                active=active,
            )
            return False
        log.info(
            "canary rollout ended; activating the build",
            label=label,
            version=version,
            rollout_id=ended,
        )
        return True

    async def activate(self, label: str, version: str, reason: ActivationReason) -> str | None:
        """Make version the label's active one, the daemon's one way; the error, or None.

        A child `netroot activate` (announced like any activation, with its
        reason), then the database is brought in step with the store. A daemon
        build (activation = auto) and a canary rollout's promotion both come here.
        """
        if self.replicas_held is not None and reason in ("auto", "canary"):
            await self.replicas_held(label, version)  # the child refuses if still too few
        argv = netroot_argv(self.ctx, "activate", label, version, "--reason", reason)
        done = await proc.arun(argv, env=child_env(), check=False)
        self.reconcile(label)
        return child_failure(done).message if done.returncode != 0 else None
