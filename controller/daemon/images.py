"""Make the database agree with the store, announcing what changed: read, diff, apply.

The store's history is the commit point of an activation; the database
records what was applied to nodes and published. The CLI announces its own
changes (controller.daemon.announce); the daemon hears of them from the
store itself (controller.daemon.imagewatch) and after its own builds, and
then compares: what the store holds (StoreView) and what the database last
recorded (DbView) give a Diff (pure), which is applied to the node states
and the retained image state, announcing what a killed process left
unannounced, in one transaction. The comparison holds the label lock, so it
never sees a CLI command half done.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from controller.config.models import Config
from controller.core.errors import StoreError
from controller.core.log import get_logger
from controller.daemon.announce import announce_history, entry_time, summary
from controller.daemon.builds import LabelRow
from controller.daemon.db import Database, Tx
from controller.daemon.emit import Emitter
from controller.daemon.nodebook import NodeBook
from controller.events.payloads import ImageState, Pruned, VersionSummary
from controller.store import history, liveedits
from controller.store import versions as store
from controller.store.layout import LabelPaths, label_paths
from controller.store.locking import label_lock

log = get_logger("images")

__all__ = ["DbView", "Diff", "ImageBook", "LabelBusy", "StoreView", "diff", "summary"]


class LabelBusy(Exception):
    """A build, activation or gc holds the label's lock: look again later."""


def _busy() -> None:
    raise LabelBusy


@dataclass(frozen=True)
class StoreView:
    """What the store says about one label (read under its lock)."""

    label: str
    on_disk: tuple[str, ...]  # committed versions, oldest first
    entries: tuple[history.Entry, ...]  # the history
    stack: tuple[str, ...]  # the rollback stack: active last
    live_edits: Mapping[str, int]  # per version on disk
    new: Mapping[str, VersionSummary]  # versions the database does not know, readable


@dataclass(frozen=True)
class DbView:
    """What the database last recorded about the label."""

    known: Mapping[str, VersionSummary]
    row: LabelRow | None
    announced: int | None  # history lines announced (None: never looked at)
    live_edits: Mapping[str, int]


@dataclass(frozen=True)
class Diff:
    """What a comparison found: the views, and what applying it changes."""

    store: StoreView
    db: DbView
    active: str | None
    target: str | None  # the rollback target
    gone: tuple[str, ...]  # pruned since the database looked
    edits: Mapping[str, int]  # versions whose live-edit count changed: the new count
    remount: tuple[str, ...]  # versions edited in place since the database looked
    announce_from: int  # the first history line to announce
    activated_at: datetime | None  # set when the active version changed: nodes go stale
    since: float | None  # when the active version became active

    @property
    def changed(self) -> bool:
        """False when store and database agree: nothing to apply."""
        row = self.db.row
        return (
            row is None
            or (row.active, row.previous) != (self.active, self.target)
            or bool(self.store.new or self.gone or self.edits)
            or self.announce_from != len(self.store.entries)
        )


def diff(store_view: StoreView, db: DbView, now: datetime) -> Diff:
    """Compare the store with the database. Pure."""
    entries, stack, row = store_view.entries, store_view.stack, db.row
    active = stack[-1] if stack else None
    announced = db.announced
    if announced is None:
        # First look at this label: what the store holds is adopted silently;
        # a database from before the count announces only the last change.
        changed = row is not None and row.active != active and active is not None
        announced = len(entries) - (1 if changed else 0)
    seen = db.live_edits
    edits = {v: n for v, n in store_view.live_edits.items() if n != seen.get(v, 0)}
    at = _activated_at(entries, active, now) if active else None
    since = at.timestamp() if at else None
    if row is not None and row.active == active:
        since = row.activated_at
    switched = row is not None and row.active != active and active is not None
    return Diff(
        store_view,
        db,
        active,
        stack[-2] if len(stack) > 1 else None,
        gone=tuple(v for v in db.known if v not in set(store_view.on_disk)),
        edits=edits,
        remount=tuple(
            v for v, n in edits.items() if v not in store_view.new and n > seen.get(v, 0)
        ),
        announce_from=announced,
        activated_at=at if switched else None,
        since=since,
    )


def _activated_at(entries: tuple[history.Entry, ...], active: str, now: datetime) -> datetime:
    """When the history made `active` the active version (its last line naming it)."""
    for entry in reversed(entries):
        if entry.version == active:
            return entry_time(entry)
    return now


class ImageBook:
    """Compares store and database for one label at a time."""

    def __init__(self, db: Database, emitter: Emitter, nodes: NodeBook) -> None:
        self.db = db
        self.emitter = emitter
        self.nodes = nodes

    def reconcile(self, config: Config, label: str) -> str | None:
        """Record new and pruned versions and a changed active version; returns the active one.

        Raises LabelBusy while another process holds the label's lock.
        """
        paths = label_paths(config, label)
        with label_lock(paths, on_wait=_busy):
            db_view = self._db_view(label)
            change = diff(_store_view(paths, db_view.known), db_view, datetime.now(UTC))
            if change.changed:
                self._apply(paths, change)
        return change.active

    def _db_view(self, label: str) -> DbView:
        return DbView(
            known=self.db.versions(label),
            row=self.db.labels().get(label),
            announced=self.db.announced(label),
            live_edits=self.db.live_edits(label),
        )

    def _apply(self, paths: LabelPaths, change: Diff) -> None:
        label = paths.label
        with self.db.transaction() as tx:
            for version_summary in change.store.new.values():
                tx.record_version(label, version_summary)
            for version, count in change.edits.items():
                tx.set_live_edits(label, version, count)
            for version in change.remount:
                # `netroot shell --live` changed it in place: its nodes must remount.
                log.info("live edit", label=label, version=version, edits=change.edits[version])
                self.nodes.live_edit(tx, label, version, datetime.now(UTC))
            if change.gone:
                tx.mark_gone(label, change.gone)
                pruned = Pruned(label=label, versions=change.gone, kept=change.store.on_disk)
                self.emitter.image(tx, pruned)
            # Lines no process announced (killed between history and outbox): by hand.
            announce_history(
                tx, self.emitter, paths, change.store.entries, change.announce_from, reason="cli"
            )
            if change.db.row is None:
                versions = len(change.store.on_disk)
                log.info("adopted label", label=label, active=change.active, versions=versions)
                self.nodes.set_active(tx, label, change.active)
            elif change.active is not None and change.activated_at is not None:
                self.nodes.activation(tx, label, change.active, change.activated_at)
            tx.set_label(label, change.active, change.target, activated_at=change.since)
            self._state(tx, change)

    def _state(self, tx: Tx, change: Diff) -> None:
        active = change.active
        versions = {**change.db.known, **change.store.new}
        state = ImageState(
            label=change.store.label,
            active=versions.get(active) if active else None,
            activated_at=(
                datetime.fromtimestamp(change.since, UTC) if active and change.since else None
            ),
            previous=change.target,
        )
        self.emitter.image_state(tx, state)


def _store_view(paths: LabelPaths, known: Mapping[str, VersionSummary]) -> StoreView:
    on_disk = tuple(store.version_ids(paths))
    entries = tuple(store.read_history(paths))
    return StoreView(
        label=paths.label,
        on_disk=on_disk,
        entries=entries,
        stack=tuple(history.replay(entries, exists=set(on_disk))),
        live_edits={v: liveedits.count(paths, v) for v in on_disk},
        new={v: s for v in on_disk if v not in known and (s := _read(paths, v)) is not None},
    )


def _read(paths: LabelPaths, version: str) -> VersionSummary | None:
    try:
        return summary(store.read_manifest(paths, version))
    except StoreError as exc:
        log.warning("cannot read a version's manifest", label=paths.label, error=str(exc))
        return None
