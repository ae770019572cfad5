"""Hear of store changes from the store itself, then compare it with the database.

A CLI command (activate, rollback, build, gc, shell --live) changes the store
under the label lock and writes its own events into the outbox; the daemon
must still apply each change to the node states and the retained image
state (controller.daemon.images). It watches, through the daemon's watcher
(inotify, never recursive):

- `<state_dir>/images/<label>`: the history, appended by every activation
  and rollback (the commit point), and versions renamed in by a build and
  out by gc;
- the active version's directory, for its live-edits record (`shell --live`
  edits only the active version).

A change wakes the comparison of its label. The command that wrote may
still hold the label lock (it publishes menus and writes its events after
the history line), and releasing a lock makes no inotify event: a busy
label is looked at again every BUSY_RETRY_S until the lock is free.

A slow resync (RESYNC_S) compares every label anyway: inotify drops events
when its queue overflows, a watch can fail (the per-user watch limit), and
moving the watch to a newly active version leaves a short gap. None of these
may leave the nodes of a label believing an old version is active for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterable
from pathlib import Path

from controller.config.models import Config
from controller.core.errors import NetrootError
from controller.core.log import get_logger
from controller.daemon.components import Component
from controller.daemon.context import Context
from controller.daemon.debounce import Batch
from controller.daemon.images import LabelBusy
from controller.daemon.watch import Watcher, WatchSpec
from controller.store import liveedits
from controller.store import versions as store
from controller.store.layout import label_paths

log = get_logger("imagewatch")

RESYNC_S = 60.0  # the safety net for lost events, not how an activation is heard of
BUSY_RETRY_S = 0.25
QUIET_S = 0.05  # a history line and the renames after it: one comparison
MAX_LATENCY_S = 0.5


def image_watch_specs(config: Config) -> list[WatchSpec]:
    """The store directories whose changes a comparison must follow, per configured label."""
    specs = []
    for label in sorted(config.labels):
        paths = label_paths(config, label)
        if not paths.images.is_dir():
            continue  # the first comparison makes it (it takes the label lock there)
        specs.append(WatchSpec(paths.images, recursive=False))
        try:
            active = store.active_version(paths)
        except (NetrootError, OSError):
            active = None  # the comparison reports what is wrong
        if active is not None:
            record = liveedits.log_path(paths, active)
            specs.append(WatchSpec(record.parent, recursive=False, only=frozenset({record})))
    return specs


def changed_labels(config: Config, changed: Iterable[Path]) -> set[str]:
    """The configured labels whose store changed: not their lock or staging area (a build
    works there for minutes), their history, versions and live-edit records."""
    images = config.state_dir / "images"
    labels = set()
    for path in changed:
        if not path.is_relative_to(images) or path == images:
            continue
        parts = path.relative_to(images).parts
        if parts[0] in config.labels and not (len(parts) > 1 and parts[1].startswith(".")):
            labels.add(parts[0])
    return labels


class ImageWatch(Component):
    """The component: store changes (or the slow resync) wake a comparison of their labels."""

    name = "images"

    def __init__(self, ctx: Context, *, resync: float = RESYNC_S) -> None:
        self.ctx = ctx
        self.resync_s = resync
        self._pending: set[str] = set()
        self._busy: set[str] = set()
        self._wake = asyncio.Event()
        self._specs = image_watch_specs(ctx.config)
        self._watcher = Watcher(
            self._specs, self._on_batch, quiet=QUIET_S, max_latency=MAX_LATENCY_S
        )

    async def setup(self) -> None:
        """Start the store watch before any component runs."""
        await self._watcher.setup()

    async def teardown(self) -> None:
        """Stop the store watch."""
        await self._watcher.teardown()

    @property
    def busy(self) -> frozenset[str]:
        """Labels changed while another process held their lock: compared again soon."""
        return frozenset(self._busy)

    def resync(self) -> None:
        """Compare every label soon (after a config reload: labels and paths may differ)."""
        self._pending |= set(self.ctx.config.labels)
        self._wake.set()

    async def _on_batch(self, batch: Batch) -> None:
        labels = changed_labels(self.ctx.config, batch)
        if labels:
            log.debug("store changed", labels=sorted(labels), paths=len(batch.paths))
            self._pending |= labels
            self._wake.set()

    async def run(self) -> None:
        """Compare what changed; retry busy labels; resync every label now and then."""
        loop = asyncio.get_running_loop()
        next_resync = loop.time() + self.resync_s
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watcher.run(), name="images-watch")
            while True:
                due = next_resync - loop.time()
                if self._busy:
                    due = min(due, BUSY_RETRY_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._wake.wait(), None if math.isinf(due) else max(0.0, due)
                    )
                self._wake.clear()
                if loop.time() >= next_resync:
                    self._pending |= set(self.ctx.config.labels)
                    next_resync = loop.time() + self.resync_s
                self._compare()

    def _compare(self) -> None:
        labels = self._pending | self._busy
        self._pending.clear()
        busy: set[str] = set()
        while labels:
            busy |= {label for label in sorted(labels) if not self._reconcile(label)}
            specs = image_watch_specs(self.ctx.config)
            if specs == self._specs:
                break
            # A new active version (or label directory) to watch. Rescheduling leaves
            # a gap: what changed in it is found by comparing every label once more.
            self._specs = specs
            self._watcher.reconfigure(specs, quiet=QUIET_S, max_latency=MAX_LATENCY_S)
            labels = set(self.ctx.config.labels) - busy
        self._busy = busy

    def _reconcile(self, label: str) -> bool:
        """Compare one label; False while it is busy (looked at again soon)."""
        try:
            self.ctx.images.reconcile(self.ctx.config, label)
        except LabelBusy:
            log.debug("label busy; compared again soon", label=label)
            return False
        except (NetrootError, OSError) as exc:
            log.warning("cannot read the store", label=label, error=str(exc))
        return True
