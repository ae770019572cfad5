"""Make the database agree with the store, announcing what changed.

The store's history is the commit point of an activation; the database
records what was applied to nodes and published. The CLI announces its own
changes (controller.daemon.announce); comparing store and database after
every build, on a timer and at start-up applies those changes to the node
states and the retained image state, and announces what a killed process
left unannounced, in the same transaction as the database change. The
comparison holds the label lock, so it never sees a CLI command half done.
"""

from __future__ import annotations

from datetime import UTC, datetime

from controller.config.models import Config
from controller.core.errors import StoreError
from controller.core.log import get_logger
from controller.daemon.announce import announce_history, entry_time, summary
from controller.daemon.db import Database, Tx
from controller.daemon.emit import Emitter
from controller.daemon.nodebook import NodeBook
from controller.events.payloads import ImageState, Pruned, VersionSummary
from controller.store import history, liveedits
from controller.store import versions as store
from controller.store.layout import LabelPaths, label_paths
from controller.store.locking import label_lock

log = get_logger("images")

__all__ = ["ImageBook", "LabelBusy", "summary"]


class LabelBusy(Exception):
    """A build, activation or gc holds the label's lock: look again later."""


def _busy() -> None:
    raise LabelBusy


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
            return self._reconcile(paths)

    def _reconcile(self, paths: LabelPaths) -> str | None:
        label = paths.label
        on_disk = store.version_ids(paths)
        entries = store.read_history(paths)
        stack = store.rollback_stack(paths)
        active = stack[-1] if stack else None
        target = stack[-2] if len(stack) > 1 else None
        known = self.db.versions(label)
        new = {v: s for v in on_disk if v not in known and (s := _read(paths, v)) is not None}
        gone = [v for v in known if v not in set(on_disk)]
        row = self.db.labels().get(label)
        unchanged = row is not None and (row.active, row.previous) == (active, target)
        announced = self.db.announced(label)
        if announced is None:
            # First look at this label: what the store holds is adopted silently;
            # a database from before the count announces only the last change.
            changed = row is not None and row.active != active and active is not None
            announced = len(entries) - (1 if changed else 0)
        edits_seen = self.db.live_edits(label)
        edits = {v: n for v in on_disk if (n := liveedits.count(paths, v)) != edits_seen.get(v, 0)}
        if unchanged and not new and not gone and not edits and announced == len(entries):
            return active
        with self.db.transaction() as tx:
            for version_summary in new.values():
                tx.record_version(label, version_summary)
            for version, count in edits.items():
                tx.set_live_edits(label, version, count)
                if version not in new and count > edits_seen.get(version, 0):
                    # `netroot shell --live` changed it in place: its nodes must remount.
                    log.info("live edit", label=label, version=version, edits=count)
                    self.nodes.live_edit(tx, label, version, datetime.now(UTC))
            if gone:
                tx.mark_gone(label, gone)
                pruned = Pruned(label=label, versions=tuple(gone), kept=tuple(on_disk))
                self.emitter.image(tx, pruned)
            # Lines no process announced (killed between history and outbox): by hand.
            announce_history(tx, self.emitter, paths, entries, announced, reason="cli")
            at = _activated_at(entries, active) if active else None
            since = at.timestamp() if at else None
            if row is not None and row.active == active:
                since = row.activated_at
            if row is None:
                log.info("adopted label", label=label, active=active, versions=len(on_disk))
                self.nodes.set_active(tx, label, active)
            elif row.active != active and active is not None and at is not None:
                self.nodes.activation(tx, label, active, at)
            tx.set_label(label, active, target, activated_at=since)
            versions = {**known, **new}
            self._state(
                tx, label=label, active=active, target=target, since=since, versions=versions
            )
        return active

    def _state(
        self,
        tx: Tx,
        *,
        label: str,
        active: str | None,
        target: str | None,
        since: float | None,
        versions: dict[str, VersionSummary],
    ) -> None:
        state = ImageState(
            label=label,
            active=versions.get(active) if active else None,
            activated_at=datetime.fromtimestamp(since, UTC) if active and since else None,
            previous=target,
        )
        self.emitter.image_state(tx, state)


def _activated_at(entries: list[history.Entry], active: str) -> datetime:
    """When the history made `active` the active version (its last line naming it)."""
    for entry in reversed(entries):
        if entry.version == active:
            return entry_time(entry)
    return datetime.now(UTC)


def _read(paths: LabelPaths, version: str) -> VersionSummary | None:
    try:
        return summary(store.read_manifest(paths, version))
    except StoreError as exc:
        log.warning("cannot read a version's manifest", label=paths.label, error=str(exc))
        return None
