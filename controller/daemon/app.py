"""`netroot serve`: recovery, then one TaskGroup of named components until SIGTERM.

Signals only set events. SIGTERM (or SIGINT) starts a bounded, ordered
shutdown: stop taking triggers, cancel builds (their process groups die),
publish what the outbox still holds, say offline, disconnect. SIGHUP reloads
the config; a bad one is reported and the running one kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

from controller import __version__
from controller.config.models import Config
from controller.core.errors import NetrootError
from controller.core.log import get_logger
from controller.daemon.bootfiles import BootFiles
from controller.daemon.checkpoint import AUTOCHECKPOINT_PAGES, WalCheckpointer
from controller.daemon.components import Component
from controller.daemon.context import Context
from controller.daemon.db import Database, db_path
from controller.daemon.debounce import Batch, affected_labels
from controller.daemon.emit import Emitter, event_source
from controller.daemon.images import ImageBook
from controller.daemon.imagewatch import ImageWatch
from controller.daemon.journal import JournalKeeper
from controller.daemon.liveness import NodeWatch
from controller.daemon.lock import exclusive, holder_pid, lock_path
from controller.daemon.mqtt import BrokerLink, Message
from controller.daemon.nodebook import NodeBook
from controller.daemon.notify import Watchdog, reloading, sd_notify
from controller.daemon.publisher import IndexKeeper, NodeTracker, Publisher, StatusBeacon
from controller.daemon.replication import Follower, ReplicaAcks
from controller.daemon.rollouts import Rollouts
from controller.daemon.scheduler import BuildScheduler
from controller.daemon.spool import SpoolListener
from controller.daemon.watch import Watcher, recipe_dependencies, watch_specs
from controller.daemon.web.server import HttpServer, read_token
from controller.events.node_messages import MAX_REPORT_BYTES
from controller.events.payloads import ConfigRejected, ConfigReloaded
from controller.events.topics import Topics
from controller.serve import publish

log = get_logger("daemon")

SHUTDOWN_S = 25.0  # within systemd's TimeoutStopSec
FLUSH_S = 5.0


@contextlib.contextmanager
def daemon_lock(state_dir: Path, role: str) -> Iterator[None]:
    """One daemon per state directory; the lock file names its pid and the role it
    serves (`netroot serve --role` is not in the config the CLI reads)."""
    path = lock_path(state_dir)
    with exclusive(path, about=role) as held:
        if not held:
            pid = holder_pid(path)
            raise NetrootError(f"another `netroot serve` (pid {pid}) already uses {state_dir}")
        yield


class Reloader(Component):
    """Waits for SIGHUP and reloads the config."""

    name = "reloader"

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.requested = asyncio.Event()

    async def run(self) -> None:
        """Reload once per burst of SIGHUPs."""
        while True:
            await self.requested.wait()
            self.requested.clear()
            await self.daemon.reload("SIGHUP")


# The cyclic collector's defaults (a young collection every 700 new objects, the
# old generations every 10 of those) took a tenth of the CPU of each node report
# in a boot storm (bench_ingest; gc.callbacks counted 500 collections, 160 ms,
# for 15,000 reports): a report makes dozens of short-lived objects, nearly none
# in a cycle. These make 11 collections, 36 ms, of the same run.
GC_THRESHOLDS = (20_000, 20, 20)


def _tune_gc() -> None:
    """Collect cycles less often; leave what start-up loaded out of every collection."""
    gc.freeze()  # config, node states, the store's index: they live as long as the daemon
    gc.set_threshold(*GC_THRESHOLDS)


class Daemon:
    """Owns the components and their order of start and stop."""

    def __init__(self, config: Config, config_path: Path | None) -> None:
        self.config = config
        self.config_path = config_path
        self.stop = asyncio.Event()
        self.stopping = False
        self.reloader = Reloader(self)

    async def run(self) -> None:
        """Recover, serve until told to stop, shut down in order."""
        config = self.config
        self.http_token = read_token(config)  # a refused token file stops us before any work
        config.state_dir.mkdir(parents=True, exist_ok=True)
        with daemon_lock(config.state_dir, config.replication.role):
            log.info("starting", version=__version__, config=config.source, pid=os.getpid())
            results = await asyncio.to_thread(publish.recover, config)
            log.info(
                "recovered",
                labels={r.label: r.active for r in results},
                removed=sum(len(r.removed) for r in results),
            )
            with Database(db_path(config), outbox_limit=config.mqtt.outbox_limit) as db:
                await self._serve(db)

    def _context(self, db: Database) -> Context:
        emitter = Emitter(Topics(self.config.mqtt.topic_prefix), event_source(self.config))
        nodes = NodeBook(db, emitter, self.config)
        images = ImageBook(db, emitter, nodes)
        return Context(self.config, self.config_path, db, emitter, nodes, images)

    def _link(self, ctx: Context) -> BrokerLink | None:
        mqtt = ctx.config.mqtt
        if not mqtt.enabled:
            log.warning("mqtt disabled: events stay in the outbox and the log")
            return None
        return BrokerLink(
            mqtt,
            client_id=f"netroot-controller-{socket.gethostname()}"[:64],
            subscriptions=[ctx.emitter.topics.node_reports()],
            will=ctx.emitter.will,
            hello=self.beacon.hello,
            # A persistent session: the broker keeps node reports for us while we restart,
            # and each stays unacknowledged (re-delivered) until its ingest commits.
            clean_session=False,
            manual_ack=True,
            # Larger node reports are refused anyway: the broker drops them
            # rather than making us read them (room for the topic and header).
            max_packet_size=MAX_REPORT_BYTES + 1024,
        )

    async def _serve(self, db: Database) -> None:
        self.ctx = ctx = self._context(db)
        self.scheduler = BuildScheduler(ctx)
        self.scheduler.requeue_interrupted()
        self.scheduler.reconcile_all()  # a crash between the store's commit and ours
        log.info(
            "state loaded",
            nodes=len(ctx.nodes.nodes),
            outbox_pending=db.outbox_pending,
            queued_builds=len(db.builds(states=["queued"])),
        )
        _tune_gc()
        self.beacon = StatusBeacon(ctx, self.scheduler)
        self.link = self.beacon.link = self._link(ctx)
        inbox: asyncio.Queue[Message] = self.link.inbox if self.link else asyncio.Queue()
        self.tracker = NodeTracker(
            inbox, ctx.nodes, ack=self.link.acknowledge if self.link else None
        )
        self.publisher = Publisher(db, self.link, ctx.emitter, ingest_idle=self.tracker.idle)
        db.on_outbox = self.publisher.notify
        db.defer_checkpoints(AUTOCHECKPOINT_PAGES)  # WalCheckpointer checkpoints off the loop
        self.spool = SpoolListener(ctx.config, db, ctx.nodes)
        self.watcher = Watcher(
            watch_specs(ctx.config, self.config_path, recipe_dependencies(ctx.config)),
            self.on_batch,
            quiet=ctx.config.debounce_quiet,
            max_latency=ctx.config.debounce_max_latency,
        )
        ctx.config.overlays_dir.mkdir(parents=True, exist_ok=True)
        self.image_watch = ImageWatch(ctx)  # activations by hand: heard from the store's history
        # Canary rollouts promote through the scheduler's activation, like a build does.
        self.rollouts = Rollouts(ctx, self.scheduler.activate)
        self.scheduler.canary = self.rollouts.request_build
        self.scheduler.rollout_ended = self.rollouts.ended  # activation = auto waits for one
        replicas: ReplicaAcks | Follower
        if ctx.config.replication.role == "replica":
            replicas = Follower(ctx, self.scheduler.activate)
        else:
            replicas = ReplicaAcks(ctx)
            self.scheduler.replicas_held = replicas.wait_held
        components: list[Component] = [
            *([self.link] if self.link is not None else []),
            self.publisher,
            self.beacon,
            IndexKeeper(ctx),
            self.tracker,
            NodeWatch(ctx, self.link),
            JournalKeeper(db, lambda: (ctx.config.events_retention, ctx.config.events_limit)),
            WalCheckpointer(db.path),
            self.spool,
            self.scheduler,
            self.watcher,
            self.image_watch,
            self.rollouts,
            replicas,
            self.reloader,
            HttpServer(ctx, self.link, self.http_token),
            BootFiles(ctx),
            Watchdog(),
        ]
        unplaced = sorted({c.name for c in components} - set(STOP_ORDER))
        if unplaced:  # a task _shutdown never cancels would hold the stop for SHUTDOWN_S
            raise RuntimeError(f"components with no place in STOP_ORDER: {', '.join(unplaced)}")
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reloader.requested.set)
        try:
            async with contextlib.AsyncExitStack() as stack:
                for component in components:
                    await stack.enter_async_context(component)
                async with asyncio.TaskGroup() as group:
                    tasks = {
                        c.name: group.create_task(self._supervised(c), name=c.name)
                        for c in components
                    }
                    group.create_task(self._lifecycle(tasks), name="lifecycle")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("stopped", outbox_pending=db.outbox_pending)

    async def _supervised(self, component: Component) -> None:
        try:
            await component.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("component crashed", component=component.name)
            raise
        if not self.stopping:
            # A component that returns on its own is a dead task nobody would notice.
            raise RuntimeError(f"component {component.name} stopped unexpectedly")

    async def _lifecycle(self, tasks: dict[str, asyncio.Task[None]]) -> None:
        # Ready: the broker tried once, and the start-up check of inputs has queued its
        # builds (the watcher already runs, so no edit falls between the two).
        started = asyncio.ensure_future(self._started())
        stop = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({started, stop}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        stop.cancel()
        sd_notify(f"READY=1\nSTATUS=serving {len(self.ctx.config.labels)} label(s)")
        log.info("ready", broker=self.link is not None and self.link.connected)
        await self.stop.wait()
        self.stopping = True
        sd_notify("STOPPING=1")
        log.info("stopping")
        finished = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_S):
                await self._shutdown(tasks)
                finished = True
        if not finished:
            log.error("shutdown took too long; cancelling what is left")
            for task in tasks.values():
                task.cancel()

    async def _started(self) -> bool:
        await self.scheduler.caught_up.wait()
        if self.link is not None:
            await self.link.attempted.wait()
        return True

    async def _shutdown(self, tasks: dict[str, asyncio.Task[None]]) -> None:
        # No new triggers (and no pruning while the rest stops).
        for name in STOP_ORDER[: STOP_ORDER.index("journal") + 1]:
            await _cancel(tasks[name])
        await _cancel(tasks["http"])  # the listeners close at teardown
        await _cancel(tasks["boot-http"])
        await _cancel(tasks["scheduler"])  # running builds are killed and recorded
        await _cancel(tasks["index"])
        # Reports the broker delivered: applied and acknowledged while still connected,
        # and their events flushed with the rest.
        await _cancel(tasks["tracker"])
        self.tracker.drain()
        try:
            async with asyncio.timeout(FLUSH_S):
                await self.publisher.flush()
        except TimeoutError:
            log.warning("outbox not flushed in time", pending=self.ctx.db.outbox_pending)
        await _cancel(tasks["publisher"])
        await _cancel(tasks["status"])
        if self.link is not None:
            await self.link.close(self.beacon.goodbye())
            await asyncio.wait([tasks["mqtt"]])
        await _cancel(tasks["checkpoint"])  # its teardown waits for a checkpoint in progress
        await _cancel(tasks["watchdog"])

    async def on_batch(self, batch: Batch) -> None:
        """Settled edits: reload the config if it changed, queue the builds they call for."""
        paths = list(batch)
        config_file = self.config_path
        if config_file is not None and config_file in paths and not await self.reload("edited"):
            paths.remove(config_file)  # the edit was refused: nothing changed
        config = self.ctx.config
        deps = await asyncio.to_thread(recipe_dependencies, config)
        labels = affected_labels(paths, config, config_file=config_file, recipe_deps=deps)
        self._watch(config, deps)  # an edit may name new files for a recipe to read
        names = [str(p) for p in paths]
        reason = f"edit of {names[0]}" if len(names) == 1 else f"edits of {len(names)} paths"
        for label, kind in labels.items():
            self.scheduler.request(label, kind, reason, names)

    async def reload(self, why: str) -> bool:
        """Load the config again; keep the running one if the new one is invalid."""
        reloading()
        source = str(self.config_path) if self.config_path else self.ctx.config.source
        try:
            # Rendered as an activation would: a config that could not be served is refused.
            new = await asyncio.to_thread(publish.load_servable, self.config_path)
            _check_reloadable(self.ctx.config, new)
        except NetrootError as exc:
            self._rejected(why, source, str(exc))
            return False
        except Exception as exc:  # no config edit may stop the daemon
            self._rejected(why, source, f"{source}: {type(exc).__name__}: {exc}")
            return False
        self._apply(new)
        with self.ctx.db.transaction() as tx:
            reloaded = ConfigReloaded(source=source[-1024:], labels=tuple(sorted(new.labels)))
            self.ctx.emitter.controller(tx, reloaded)
        log.info("config reloaded", why=why, labels=sorted(new.labels))
        sd_notify("READY=1")
        return True

    def _rejected(self, why: str, source: str, error: str) -> None:
        log.error("config rejected; keeping the running one", why=why, error=error)
        with self.ctx.db.transaction() as tx:
            rejected = ConfigRejected(source=source[-1024:], error=error[:1024])
            self.ctx.emitter.controller(tx, rejected)
        sd_notify("READY=1")

    def _apply(self, new: Config) -> None:
        ctx = self.ctx
        ctx.config = new
        ctx.nodes.config = new
        ctx.emitter.topics = Topics(new.mqtt.topic_prefix)
        ctx.db.outbox_limit = new.mqtt.outbox_limit
        new.overlays_dir.mkdir(parents=True, exist_ok=True)
        self._watch(new, recipe_dependencies(new))
        self.image_watch.resync()
        if self.link is not None:
            self.link.reconfigure(new.mqtt, [ctx.emitter.topics.node_reports()])

    def _watch(self, config: Config, deps: dict[str, list[Path]]) -> None:
        self.watcher.reconfigure(
            watch_specs(config, self.config_path, deps),
            quiet=config.debounce_quiet,
            max_latency=config.debounce_max_latency,
        )


def _check_reloadable(old: Config, new: Config) -> None:
    if new.state_dir != old.state_dir:
        raise NetrootError(f"state_dir cannot change while serving ({old.state_dir}); restart")
    if new.mqtt.enabled != old.mqtt.enabled:
        raise NetrootError("mqtt.enabled cannot change while serving; restart")
    if new.http != old.http:
        raise NetrootError("http cannot change while serving; restart")


# Every component's task, in the order _shutdown stops them (checked at start).
STOP_ORDER = (
    *("watcher", "images", "rollouts", "replicas", "spool", "reloader", "liveness", "journal"),
    *("http", "boot-http", "scheduler", "index", "tracker", "publisher", "status"),
    *("mqtt", "checkpoint", "watchdog"),
)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait([task])


async def serve(config: Config, config_path: Path | None) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    await Daemon(config, config_path).run()
