"""Replica boot servers (docs/design.md §17): the primary hears acknowledgements, a replica
follows the primary.

Both talk through the broker, over a connection of their own (not the node
reports' link): on a replica's broker a mosquitto bridge to the primary's
broker maps the primary's `events/image/+` and `state/image/+` under
`<prefix>/primary/`, and carries the replica's `events/replica/<name>`,
`state/replica/<name>` and its nodes' states and events out to the primary
(config/mosquitto-replica.conf.example). Nothing here is a home-made
transport: the bridge is mosquitto's, the files come over the primary's
HTTP API (controller.daemon.replicafetch).

The primary (`ReplicaAcks`) records each `image.replicated` in the label's
store (controller.store.holders), where every activation checks
`replicas_required`; a daemon activation first waits for enough of them.

A replica (`Follower`) fetches each version the primary builds or activates
(hard links against what it holds, every file checked, staged and renamed),
acknowledges it, and activates what the primary activates once it holds it.
When a copy fails it keeps serving its last good version, says so
(`image.replication_failed`, the retained `replica.state` with `behind`) and
tries again every `retry_interval`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from pydantic import ValidationError

from controller.core.errors import NetrootError
from controller.core.ids import normalize_mac
from controller.core.log import get_logger
from controller.daemon import fleetstore
from controller.daemon.components import Component
from controller.daemon.context import Context
from controller.daemon.mqtt import BrokerLink, Message
from controller.daemon.replicafetch import HttpSource, primary_versions
from controller.daemon.web.server import read_secret
from controller.events.envelope import EVENT_MODELS, Envelope
from controller.events.node_events import NodeState
from controller.events.payloads import (
    Activated,
    ActivationReason,
    BuildSucceeded,
    ImageReplicated,
    ImageReplicationFailed,
    ImageState,
    Payload,
    ReplicaLabel,
    ReplicaState,
    RolledBack,
)
from controller.store import holders, replica
from controller.store import versions as store
from controller.store.layout import label_paths

log = get_logger("replication")

Activate = Callable[[str, str, ActivationReason], Awaitable[str | None]]
MAX_MESSAGE = 64 * 1024
CATCH_UP = 3  # newest versions of the primary a replica makes sure to hold


def parse_event(message: Message) -> Payload | None:
    """The payload of a CloudEvent from the broker, checked; None (logged) when it is not one."""
    parsed = parse_envelope(message)
    return None if parsed is None else parsed[1]


def parse_envelope(message: Message) -> tuple[str, Payload] | None:
    """(source, payload) of a CloudEvent from the broker, checked; None (logged) otherwise."""
    if len(message.payload) > MAX_MESSAGE:
        log.warning("oversized message ignored", topic=message.topic, size=len(message.payload))
        return None
    try:
        envelope = Envelope.model_validate_json(message.payload)
        model = EVENT_MODELS.get(envelope.type)
        return None if model is None else (envelope.source, model.model_validate(envelope.data))
    except (ValidationError, ValueError) as exc:
        first = str(exc).splitlines()[0][:200]
        log.warning("not a netroot event; ignored", topic=message.topic, error=first)
        return None


class FleetMirror:
    """Other servers' retained node states into the fleet_nodes table (`nodes --fleet`)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # This controller's own states come back on the same topics: skipped unparsed.
        self.own = f'"source":{json.dumps(ctx.emitter.source)}'.encode()

    def take(self, messages: list[Message]) -> list[Message]:
        """Apply the node states among messages, all in one transaction (a replica's boot
        storm arrives as thousands of them); returns the other messages."""
        others: list[Message] = []
        changes: list[tuple[str, NodeState | None]] = []  # (server, state) or (mac, None)
        for message in messages:
            head, sep, mac = message.topic.rpartition("/state/node/")
            if not sep or not head:
                others.append(message)
            elif not message.payload:  # an emptied retained state: the node is forgotten
                with contextlib.suppress(ValueError):
                    changes.append((normalize_mac(mac), None))
            elif self.own not in message.payload and (change := self._state(message, mac)):
                changes.append(change)
        if changes:
            with self.ctx.db.transaction() as tx:
                for key, state in changes:
                    if state is None:
                        fleetstore.drop(tx, key)
                    else:
                        fleetstore.put(tx, key, state)
        return others

    def _state(self, message: Message, mac: str) -> tuple[str, NodeState] | None:
        parsed = parse_envelope(message)
        if parsed is None or not isinstance(parsed[1], NodeState):
            return None
        source, state = parsed[0], parsed[1]
        if state.mac != mac:
            log.warning("node state on another node's topic; ignored", topic=message.topic)
            return None
        return source.removeprefix("netroot://")[:128], state


def _drained(inbox: asyncio.Queue[Message]) -> list[Message]:
    """The message just taken's companions: what else has already arrived."""
    found = []
    while not inbox.empty():
        found.append(inbox.get_nowait())
    return found


def _link(ctx: Context, role: str, subscriptions: list[str]) -> BrokerLink:
    name = ctx.config.replication.name
    # A persistent session: an acknowledgement sent while this link reconnects (a new
    # subscription, a broker restart) waits at the broker instead of being lost.
    return BrokerLink(
        ctx.config.mqtt,
        client_id=f"netroot-{role}-{name}"[:64],
        subscriptions=subscriptions,
        clean_session=False,
    )


class ReplicaAcks(Component):
    """The primary's side: replicas' acknowledgements into the store; activations wait on them."""

    name = "replicas"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.link = _link(ctx, "primary", self._subscriptions(mirror=False))
        self.fleet = FleetMirror(ctx)
        self.mirroring = False
        # Set, then replaced, on every acknowledgement recorded: a waiter that took it
        # before looking at the store cannot miss one that came while it looked.
        self.acked = asyncio.Event()
        self.states: dict[str, ReplicaState] = {}

    async def run(self) -> None:
        """Keep the link, record what arrives."""
        if not self.ctx.config.mqtt.enabled:
            await asyncio.Event().wait()  # no broker: no replica can be heard
        async with asyncio.TaskGroup() as group:
            group.create_task(self.link.run(), name="replicas-mqtt")
            while True:
                first = await self.link.inbox.get()
                for message in self.fleet.take([first, *_drained(self.link.inbox)]):
                    await self._receive(message)

    async def teardown(self) -> None:
        """Leave the broker."""
        await self.link.teardown()

    def _subscriptions(self, *, mirror: bool) -> list[str]:
        topics = self.ctx.emitter.topics
        found = [topics.replica_events_all(), topics.replica_state_all()]
        # Every node state this controller publishes would come back on this link too:
        # only once a replica is heard of (a single server pays nothing in a boot storm).
        return [*found, topics.node_states_all()] if mirror else found

    async def _receive(self, message: Message) -> None:
        data = parse_event(message)
        if isinstance(data, ImageReplicated | ReplicaState) and not self.mirroring:
            self.mirroring = True
            log.info("a replica is heard: mirroring the other servers' node states")
            self.link.reconfigure(self.ctx.config.mqtt, self._subscriptions(mirror=True))
        if isinstance(data, ImageReplicated):
            await self._record(data)
        elif isinstance(data, ImageReplicationFailed):
            log.warning(
                "a replica could not copy a version",
                replica=data.replica,
                label=data.label,
                version=data.version,
                error=data.error,
            )

    async def _record(self, ack: ImageReplicated) -> None:
        config = self.ctx.config
        if ack.label not in config.labels:
            log.warning("acknowledgement for an unconfigured label", label=ack.label)
            return
        paths = label_paths(config, ack.label)
        if ack.version not in store.version_ids(paths):
            log.warning("acknowledgement of a version not in the store", version=ack.version)
            return
        await asyncio.to_thread(holders.record, paths, ack.version, ack.replica, datetime.now(UTC))
        log.info("replica holds version", replica=ack.replica, label=ack.label, version=ack.version)
        self.acked.set()
        self.acked = asyncio.Event()

    async def wait_held(self, label: str, version: str) -> None:
        """Return once `replicas_required` replicas hold version, or after `ack_timeout`
        (the activation then refuses, saying how many hold it)."""
        replication = self.ctx.config.replication
        if replication.role != "primary" or replication.replicas_required <= 0:
            return
        paths = label_paths(self.ctx.config, label)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(replication.ack_timeout):
                while True:
                    acked = self.acked
                    held = await asyncio.to_thread(holders.held_by, paths, version)
                    if len(held) >= replication.replicas_required:
                        return
                    log.info(
                        "activation waits for replicas",
                        label=label,
                        version=version,
                        held=held,
                        required=replication.replicas_required,
                    )
                    await acked.wait()


class Follower(Component):
    """A replica's side: copy what the primary builds and activates, acknowledge, follow."""

    name = "replicas"

    def __init__(self, ctx: Context, activate: Activate) -> None:
        self.ctx = ctx
        self.activate = activate
        replication = ctx.config.replication
        topics = ctx.emitter.topics
        subscriptions = [
            topics.upstream_image_events(),
            topics.upstream_image_state(),
            topics.upstream_node_states(),
        ]
        self.link = _link(ctx, "replica", subscriptions)
        self.fleet = FleetMirror(ctx)
        self.token = (
            read_secret(replication.token_file, ctx.config.source, "replication.token_file")
            if replication.token_file is not None
            else None
        )
        self.wanted: dict[str, set[str]] = {}  # label -> versions to hold
        self.target: dict[str, str] = {}  # label -> the primary's active version
        self.errors: dict[str, str] = {}
        self.wake = asyncio.Event()
        self._published: ReplicaState | None = None
        self.acknowledged: set[tuple[str, str]] = set()  # (label, version) said this run

    async def run(self) -> None:
        """Keep the link, take the primary's news, work through it."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.link.run(), name="replicas-mqtt")
            group.create_task(self._work(), name="replicas-work")
            while True:
                first = await self.link.inbox.get()
                for message in self.fleet.take([first, *_drained(self.link.inbox)]):
                    self._heard(message)

    async def teardown(self) -> None:
        """Leave the broker."""
        await self.link.teardown()

    def _heard(self, message: Message) -> None:
        data = parse_event(message)
        match data:
            case ImageState(label=label, active=active) if active is not None:
                self._want(label, active.version, target=True)
            case Activated(label=label, version=version) | RolledBack(label=label, version=version):
                self._want(label, version, target=True)
            case BuildSucceeded(label=label, version=version):
                self._want(label, version, target=False)
            case _:
                return

    def _want(self, label: str, version: str, *, target: bool) -> None:
        """Hold version (and follow it, when the primary has it active); wakes the work
        only when that is news."""
        labels = self.ctx.config.labels
        if label not in labels:
            log.info("the primary's label is not served here", label=label)
            return
        if labels[label].rw:
            # One node writes an rw label's tree on the primary: its index no longer says
            # what the tree holds, and no second server may serve it.
            log.info("an rw label is not replicated", label=label)
            return
        changed = False
        if target and self.target.get(label) != version:
            self.target[label] = version
            changed = True
        held = version in store.version_ids(label_paths(self.ctx.config, label))
        versions = self.wanted.setdefault(label, set())
        if not held and version not in versions:
            versions.add(version)
            changed = True
        if changed:
            self.wake.set()

    async def _work(self) -> None:
        retry = self.ctx.config.replication.retry_interval
        while True:
            self.wake.clear()
            await self._catch_up()
            for label in sorted(self.wanted):
                await self._sync(label)
            self._publish_state()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), retry)

    async def _catch_up(self) -> None:
        """Ask the primary what it holds and has active: the bus brings news promptly,
        this finds what a replica missed while its bridge or the primary was away."""
        replication = self.ctx.config.replication
        for label, settings in sorted(self.ctx.config.labels.items()):
            if settings.rw:
                continue
            try:
                rows = await asyncio.to_thread(
                    primary_versions, replication.primary_url, self.token, label
                )
            except NetrootError as exc:
                self.errors[label] = f"primary unreachable: {exc}"[:1024]
                log.warning("cannot list the primary's versions", label=label, error=str(exc))
                continue
            held = set(store.version_ids(label_paths(self.ctx.config, label)))
            active = next((v for v, is_active in rows if is_active), None)
            for version, _ in rows[-CATCH_UP:]:
                if version not in held and (active is None or version >= active):
                    self._want(label, version, target=False)
            if active is not None:
                self._want(label, active, target=True)
            # What the primary lists and this server holds, it says once per start: an
            # acknowledgement lost while the bridge was down is not lost for good.
            for version, _ in rows:
                if version in held and (label, version) not in self.acknowledged:
                    self.wanted.setdefault(label, set()).add(version)

    async def _sync(self, label: str) -> None:
        paths = label_paths(self.ctx.config, label)
        target = self.target.get(label)
        # Superseded: an older build the primary never activated is not worth a retry.
        pending = sorted(v for v in self.wanted.get(label, ()) if target is None or v >= target)
        self.wanted[label] = set(pending)
        self.errors.pop(label, None)
        for version in pending:
            if not await self._copy(label, version):
                self.errors.setdefault(label, f"{version}: copy failed")
                if version == target:
                    return  # keep serving the last good version
                continue
            self.wanted[label].discard(version)
        if target is not None and store.active_version(paths) != target:
            if target not in store.version_ids(paths):
                return
            error = await self.activate(label, target, "replica")
            if error is not None:
                self.errors[label] = f"activating {target}: {error}"
                log.error("cannot follow the primary's activation", label=label, error=error)

    async def _copy(self, label: str, version: str) -> bool:
        config = self.ctx.config
        paths = label_paths(config, label)
        replication = config.replication
        source = HttpSource(replication.primary_url, self.token, label, version)
        try:
            done = await asyncio.to_thread(replica.replicate, paths, version, source)
        except (NetrootError, OSError) as exc:
            self._failed(label, version, str(exc)[:1024])
            return False
        finally:
            source.close()
        with self.ctx.db.transaction() as tx:
            ack = ImageReplicated(
                label=label,
                replica=replication.name,
                version=version,
                fetched_files=done.fetched_files,
                fetched_bytes=done.fetched_bytes,
                linked_files=done.linked_files,
                duration_s=round(done.seconds, 3),
                held=done.held,
            )
            self.ctx.emitter.replica(tx, ack)
        self.acknowledged.add((label, version))
        return True

    def _failed(self, label: str, version: str, error: str) -> None:
        replication = self.ctx.config.replication
        log.error("copy from the primary failed", label=label, version=version, error=error)
        with self.ctx.db.transaction() as tx:
            failed = ImageReplicationFailed(
                label=label,
                replica=replication.name,
                version=version,
                error=error,
                retry_s=replication.retry_interval,
            )
            self.ctx.emitter.replica(tx, failed)
        self.errors[label] = error

    def _publish_state(self) -> None:
        config = self.ctx.config
        rows = []
        for label in sorted(config.labels):
            active = store.active_version(label_paths(config, label))
            primary = self.target.get(label)
            rows.append(
                ReplicaLabel(
                    label=label,
                    active=active,
                    primary_active=primary,
                    behind=primary is not None and active != primary,
                    error=self.errors.get(label, "")[:1024],
                )
            )
        state = ReplicaState(
            replica=config.replication.name,
            primary_url=config.replication.primary_url,
            labels=tuple(rows),
        )
        if state == self._published:
            return
        self._published = state
        with self.ctx.db.transaction() as tx:
            self.ctx.emitter.replica_state(tx, state)
        behind = [r.label for r in rows if r.behind]
        log.info("replica state", behind=behind, errors=dict(self.errors))
