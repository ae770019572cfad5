"""Watch recipes, overlays, base/ and the config file, and feed the pure Debouncer.

watchdog runs its observer in a thread; the one place that thread meets the
event loop is `loop.call_soon_threadsafe` in `_Bridge`. Everything after that
(debouncing, mapping a batch to labels) runs on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from controller.config.models import Config
from controller.core.log import get_logger
from controller.daemon.components import Component
from controller.daemon.debounce import Batch, Debouncer
from controller.recipes.load import recipe_inputs

log = get_logger("watch")

# Opened and closed-without-writing change nothing; a directory's "modified"
# only echoes a change of one of its entries, which arrives on its own.
_CHANGES = frozenset({"created", "modified", "deleted", "moved", "closed"})


@dataclass(frozen=True, slots=True)
class WatchSpec:
    """A directory to watch; with `only`, just those files in it (the config file, a
    recipe's source beside unrelated files)."""

    path: Path
    recursive: bool = True
    only: frozenset[Path] | None = None


def _under(path: Path, top: Path) -> bool:
    return path == top or path.is_relative_to(top)


def watch_specs(
    config: Config, config_file: Path | None, deps: Mapping[str, Sequence[Path]] | None = None
) -> list[WatchSpec]:
    """What the daemon watches for a config: recipes, overlays, base/, the config file,
    and every file a recipe reads outside those (deps, from recipe_dependencies): a
    directory recursively, a file through its directory."""
    specs = [WatchSpec(config.recipes_dir), WatchSpec(config.overlays_dir)]
    specs.append(WatchSpec(config.base_dir))
    trees = [spec.path for spec in specs]
    files: dict[Path, set[Path]] = {}
    if config_file is not None:
        files[config_file.parent] = {config_file}
    outside = sorted({p for paths in (deps or {}).values() for p in paths})
    for path in outside:
        if any(_under(path, top) for top in trees):
            continue
        if path.is_dir() and not path.is_symlink():
            trees.append(path)  # sorted: a tree comes before what lies inside it
            specs.append(WatchSpec(path))
        else:  # a file, or a source not created yet
            files.setdefault(path.parent, set()).add(path)
    for parent, names in sorted(files.items()):
        inside = {n for n in names if not any(_under(n, top) for top in trees)}
        if inside:
            specs.append(WatchSpec(parent, recursive=False, only=frozenset(inside)))
    return specs


def recipe_dependencies(config: Config) -> dict[str, list[Path]]:
    """For each label, the files its recipe reads, as the recipe loader lists them
    (controller.recipes.load.recipe_inputs): its recipe, the recipes it extends, a
    .def, an import source, `files` and `%files` sources, what `%setup` names.

    A recipe that does not load depends on what was read before the error (the
    build then reports what is wrong with it).
    """
    return {label: list(recipe_inputs(config.recipe_path(label))) for label in config.labels}


class _Bridge(FileSystemEventHandler):
    """Runs in the observer thread: hands each changed path to the loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        callback: Callable[[str], None],
        only: frozenset[Path] | None,
    ) -> None:
        self._loop = loop
        self._callback = callback
        self._only = frozenset(map(os.fspath, only)) if only is not None else None

    def on_any_event(self, event: FileSystemEvent) -> None:
        """Forward created, modified, deleted, moved and closed-after-write paths."""
        if event.event_type not in _CHANGES:
            return
        if event.is_directory and event.event_type == "modified":
            return
        paths = [os.fsdecode(event.src_path)]
        if event.dest_path:
            paths.append(os.fsdecode(event.dest_path))
        for path in paths:
            if self._only is None or path in self._only:
                self._loop.call_soon_threadsafe(self._callback, path)


BatchSink = Callable[[Batch], Awaitable[None]]


class Watcher(Component):
    """The watcher component: observer thread, debouncer, one batch at a time to the sink."""

    name = "watcher"

    def __init__(
        self, specs: Iterable[WatchSpec], sink: BatchSink, *, quiet: float, max_latency: float
    ) -> None:
        self._specs = list(specs)
        self._sink = sink
        self._debouncer = Debouncer(quiet, max(quiet, max_latency))
        self._wake = asyncio.Event()
        self._observer: BaseObserver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.notifications = 0  # raw paths received, noise included

    async def setup(self) -> None:
        """Start the observer thread on the watched directories."""
        self._loop = asyncio.get_running_loop()
        self._observer = Observer()
        self._schedule(announce=True)
        self._observer.start()

    async def teardown(self) -> None:
        """Stop the observer thread."""
        if self._observer is not None:
            self._observer.stop()
            await asyncio.to_thread(self._observer.join, 10)
            self._observer = None

    def _running(self) -> tuple[BaseObserver, asyncio.AbstractEventLoop]:
        if self._observer is None or self._loop is None:
            raise RuntimeError("the watcher is used outside its `async with`")
        return self._observer, self._loop

    def _schedule(self, *, announce: bool = False) -> None:
        # Said once at start; the image watch reschedules on every activation.
        say = log.info if announce else log.debug
        observer, loop = self._running()
        for spec in self._specs:
            if not spec.path.is_dir():
                log.warning("not watching a missing directory", path=str(spec.path))
                continue
            bridge = _Bridge(loop, self._on_path, spec.only)
            try:
                observer.schedule(bridge, os.fspath(spec.path), recursive=spec.recursive)
            except OSError as exc:  # e.g. the inotify watch limit: the others still work
                log.warning("cannot watch", path=str(spec.path), error=str(exc))
                continue
            say("watching", path=str(spec.path), recursive=spec.recursive)

    def reconfigure(self, specs: Iterable[WatchSpec], *, quiet: float, max_latency: float) -> None:
        """Watch other paths or debounce differently (after a config reload)."""
        specs = list(specs)
        observer, loop = self._running()
        if (quiet, max(quiet, max_latency)) != (self._debouncer.quiet, self._debouncer.max_latency):
            pending = self._debouncer.take(float("inf"))
            self._debouncer = Debouncer(quiet, max(quiet, max_latency))
            for path in pending or ():
                self._debouncer.add(path, loop.time())
        if specs != self._specs:
            observer.unschedule_all()
            self._specs = specs
            self._schedule()
        self._wake.set()

    def _on_path(self, path: str) -> None:
        _, loop = self._running()
        self.notifications += 1
        was_idle = len(self._debouncer) == 0
        # Only the first change of a batch moves the deadline earlier; later
        # ones push it back, which the sleeping loop notices when it wakes.
        if self._debouncer.add(path, loop.time()) and was_idle:
            self._wake.set()

    async def run(self) -> None:
        """Sleep until the pending batch is due, then hand it to the sink."""
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            deadline = self._debouncer.deadline()
            if deadline is None:
                await self._wake.wait()
            elif deadline > loop.time():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), deadline - loop.time())
            batch = self._debouncer.take(loop.time())
            if batch is not None:
                log.info("changes settled", paths=len(batch.paths), notifications=batch.events)
                await self._sink(batch)
