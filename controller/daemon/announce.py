"""Changes of the store as events, whoever made them (the CLI or the daemon).

A build, an activation, a rollback and a prune each write their event into
the outbox of `<state_dir>/netroot.db`: the CLI does it itself, in the
transaction that records the change in the database, while it still holds
the label lock; the daemon publishes what is there, now or when it next runs.

The activation history file is the store's commit point, and no database
transaction can include a file append. So the database counts the history
lines announced: a process killed between its history line and its event
leaves the line unannounced, and the daemon announces it from the history
itself, with the time the line records (the real time of the action).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from controller.config.models import Config
from controller.core.errors import StoreError
from controller.daemon.builds import BuildRow
from controller.daemon.db import Closing, Database, DatabaseError, Tx, db_path
from controller.daemon.emit import Emitter, event_source
from controller.events.payloads import (
    Activated,
    ActivationReason,
    BuildFailed,
    BuildKind,
    BuildStarted,
    BuildSucceeded,
    Pruned,
    RolledBack,
    VersionSummary,
)
from controller.events.topics import Topics
from controller.store import history
from controller.store import versions as store
from controller.store.layout import LabelPaths
from controller.store.manifest import Manifest

MAX_TEXT = 1024
MAX_TAIL = 16384
STAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # activation._record writes this


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


def record_success(
    tx: Tx, emitter: Emitter, row: BuildRow, manifest: Manifest, duration: float
) -> None:
    """Record a build that committed `manifest`, with its build.succeeded event."""
    tx.finish_build(row.build_id, "succeeded", version=manifest.version)
    tx.record_version(row.label, summary(manifest, row.kind))
    succeeded = BuildSucceeded(
        label=row.label,
        build_id=row.build_id,
        kind=row.kind,
        version=manifest.version,
        duration_s=max(0.0, duration),
    )
    emitter.image(tx, succeeded)


def entry_time(entry: history.Entry) -> datetime:
    """When a history line says its action happened (now, for an unreadable stamp)."""
    try:
        return datetime.strptime(entry.time, STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Change:
    """What one history line did: the version it made active and the one before."""

    entry: history.Entry
    previous: str | None


def changes(entries: Sequence[history.Entry], start: int) -> list[Change]:
    """The changes made by entries[start:] (a line that changed nothing is left out). Pure."""
    out = []
    for i in range(max(0, start), len(entries)):
        before = history.replay(entries[:i])
        previous = before[-1] if before else None
        if previous != entries[i].version:
            out.append(Change(entries[i], previous))
    return out


def manifest_or_none(paths: LabelPaths, version: str) -> Manifest | None:
    """The version's manifest, or None when it cannot be read (pruned since, damaged)."""
    try:
        return store.read_manifest(paths, version)
    except StoreError:
        return None


def announce_history(
    tx: Tx,
    emitter: Emitter,
    paths: LabelPaths,
    entries: Sequence[history.Entry],
    start: int,
    *,
    reason: ActivationReason,
) -> int:
    """Events for entries[start:] (activated or rolled_back); notes them announced."""
    done = changes(entries, start)
    for change in done:
        version = change.entry.version
        manifest = manifest_or_none(paths, version)
        build_id = (manifest.build_id or None) if manifest else None
        at = entry_time(change.entry)
        if change.entry.action == "rollback" and change.previous is not None:
            emitter.image(
                tx,
                RolledBack(
                    label=paths.label, version=version, previous=change.previous, build_id=build_id
                ),
                at,
            )
        else:
            kernel = (manifest.kernel_version or None) if manifest else None
            data = Activated(
                label=paths.label,
                version=version,
                previous=change.previous,
                kernel=kernel,
                build_id=build_id,
                reason=reason,
            )
            emitter.image(tx, data, at)
    tx.set_announced(paths.label, len(entries))
    return len(done)


class Announcer(Closing):
    """The CLI's writer of store events into the daemon's outbox (an open database)."""

    def __init__(self, config: Config) -> None:
        self.db = Database(db_path(config), outbox_limit=config.mqtt.outbox_limit)
        self.emitter = Emitter(Topics(config.mqtt.topic_prefix), event_source(config))

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Tx]:
        try:
            with self.db.transaction() as tx:
                yield tx
        except sqlite3.Error as exc:
            raise DatabaseError(f"{self.db.path}: cannot record the event: {exc}") from None

    def history_length(self, paths: LabelPaths) -> int:
        """Lines in the label's history now (read before changing it)."""
        return len(store.read_history(paths))

    def activation(self, paths: LabelPaths, before: int, reason: ActivationReason) -> int:
        """Announce the history lines written since `before` lines (and any left behind)."""
        entries = store.read_history(paths)
        with self._tx() as tx:
            announced = self.db.announced(paths.label)
            # Lines older than this command that nobody announced (a killed process)
            # go out now too; on a database that never saw the label, only ours do.
            start = before if announced is None else min(announced, before)
            return announce_history(tx, self.emitter, paths, entries, start, reason=reason)

    def build_started(self, label: str, build_id: str, kind: BuildKind, reason: str) -> BuildRow:
        """The build runs: its row (the daemon's queued one, or a new one) and build.started."""
        with self._tx() as tx:
            row = tx.begin_build(build_id, label, kind, reason)
            started = BuildStarted(
                label=label,
                build_id=build_id,
                kind=row.kind,
                reason=row.reason[:MAX_TEXT],
                paths=tuple(p[-MAX_TEXT:] for p in row.paths),
            )
            self.emitter.image(tx, started)
        return row

    def build_succeeded(self, row: BuildRow, manifest: Manifest, duration: float) -> None:
        """The build committed a version."""
        with self._tx() as tx:
            record_success(tx, self.emitter, row, manifest, duration)

    def build_failed(
        self, row: BuildRow, step: str, error: str, tail: str, duration: float
    ) -> None:
        """The build failed; nothing was committed."""
        with self._tx() as tx:
            tx.finish_build(row.build_id, "failed", step=step[:128], error=error[:MAX_TEXT])
            failed = BuildFailed(
                label=row.label,
                build_id=row.build_id,
                kind=row.kind,
                step=step[:128],
                error=error[:MAX_TEXT],
                log_tail=tail[-MAX_TAIL:],
                duration_s=max(0.0, duration),
            )
            self.emitter.image(tx, failed)

    def pruned(self, paths: LabelPaths, pruned: Sequence[str]) -> None:
        """gc removed versions."""
        if not pruned:
            return
        kept = tuple(store.version_ids(paths))
        with self._tx() as tx:
            tx.mark_gone(paths.label, pruned)
            self.emitter.image(tx, Pruned(label=paths.label, versions=tuple(pruned), kept=kept))
