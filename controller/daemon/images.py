"""Make the database agree with the store, announcing what changed.

The store's history is the commit point of an activation; the database only
records what was published. Comparing the two after every build, on a timer
(to see `netroot activate`, `rollback` and `gc` run by hand) and at start-up
(after a crash between the two commits) turns every difference into exactly
one event, in the same transaction as the database change.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

from controller import liveedits, store
from controller.config import Config
from controller.daemon.emit import Emitter
from controller.daemon.nodebook import NodeBook
from controller.db import Database, LabelRow, Tx
from controller.errors import StoreError
from controller.events import (
    Activated,
    BuildKind,
    ImageState,
    Pruned,
    RolledBack,
    VersionSummary,
)
from controller.layout import LabelPaths, label_paths
from controller.log import get_logger
from controller.manifest import Manifest

log = get_logger("images")


def summary(manifest: Manifest, kind: BuildKind = "full") -> VersionSummary:
    """What subscribers learn about a version."""
    return VersionSummary(
        version=manifest.version,
        built_at=manifest.created,
        kind=kind,
        kernel=manifest.kernel_version or None,
        file_count=manifest.file_count,
        size_bytes=manifest.size_bytes,
    )


class ImageBook:
    """Compares store and database for one label at a time."""

    def __init__(self, db: Database, emitter: Emitter, nodes: NodeBook) -> None:
        self.db = db
        self.emitter = emitter
        self.nodes = nodes

    def reconcile(self, config: Config, label: str) -> str | None:
        """Record new and pruned versions and a changed active version; returns the active one."""
        paths = label_paths(config, label)
        on_disk = store.version_ids(paths)
        stack = store.rollback_stack(paths)
        active = stack[-1] if stack else None
        target = stack[-2] if len(stack) > 1 else None
        known = self.db.versions(label)
        new = {v: s for v in on_disk if v not in known and (s := _read(paths, v)) is not None}
        gone = [v for v in known if v not in set(on_disk)]
        row = self.db.labels().get(label)
        unchanged = row is not None and (row.active, row.previous) == (active, target)
        announced = self.db.live_edits(label)
        edits = {v: n for v in on_disk if (n := liveedits.count(paths, v)) != announced.get(v, 0)}
        if unchanged and not new and not gone and not edits:
            return active
        with self.db.transaction() as tx:
            for version_summary in new.values():
                tx.record_version(label, version_summary)
            for version, count in edits.items():
                tx.set_live_edits(label, version, count)
                if version not in new and count > announced.get(version, 0):
                    # `netroot shell --live` changed it in place: its nodes must remount.
                    log.info("live edit", label=label, version=version, edits=count)
                    self.nodes.live_edit(tx, label, version, datetime.now(UTC))
            if gone:
                tx.mark_gone(label, gone)
                pruned = Pruned(label=label, versions=tuple(gone), kept=tuple(on_disk))
                self.emitter.image(tx, pruned)
            if row is None:
                log.info("adopted label", label=label, active=active, versions=len(on_disk))
                self.nodes.set_active(tx, label, active)
            elif row.active != active and active is not None:
                self._announce(tx, paths, row, active)
            tx.set_label(label, active, target)
            since = row.activated_at if row is not None and row.active == active else tx.now
            versions = {**known, **new}
            self._state(
                tx, label=label, active=active, target=target, since=since, versions=versions
            )
        return active

    def _announce(self, tx: Tx, paths: LabelPaths, row: LabelRow, active: str) -> None:
        history = store.read_history(paths)
        last = history[-1] if history else None
        kernel = None
        with contextlib.suppress(StoreError):
            kernel = store.read_manifest(paths, active).kernel_version or None
        if last is not None and last.action == "rollback" and row.active is not None:
            self.emitter.image(
                tx, RolledBack(label=paths.label, version=active, previous=row.active)
            )
        else:
            self.emitter.image(
                tx,
                Activated(label=paths.label, version=active, previous=row.active, kernel=kernel),
            )
        self.nodes.activation(tx, paths.label, active, datetime.now(UTC))

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


def _read(paths: LabelPaths, version: str) -> VersionSummary | None:
    try:
        return summary(store.read_manifest(paths, version))
    except StoreError as exc:
        log.warning("cannot read a version's manifest", label=paths.label, error=str(exc))
        return None
