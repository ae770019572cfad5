"""What the HTTP server reports, read at request time from the state database and the store.

Every function here blocks (SQLite, manifest files): the server runs them in a
worker thread on a read-only connection of their own (WAL readers never block
the daemon's writer), never on the daemon's event loop.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from controller.config.models import Config
from controller.daemon.builds import BuildRow, BuildState
from controller.daemon.db import Database, db_path
from controller.store import versions as store
from controller.store.layout import label_paths

FINISHED: tuple[BuildState, ...] = ("succeeded", "failed", "interrupted")
# Seconds since a node was last heard from: heartbeats (60 s) up to a week of silence.
LAST_SEEN_BUCKETS = (30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 6 * 3600.0, 86400.0, 7 * 86400.0)
BUILD_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class Histogram:
    """Observations sorted into cumulative buckets (the Prometheus shape)."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]  # per bound, cumulative; then +Inf
    total: float

    @classmethod
    def of(cls, values: list[float], bounds: tuple[float, ...]) -> Histogram:
        """The histogram of values over bounds."""
        counts = (*(sum(1 for v in values if v <= b) for b in bounds), len(values))
        return cls(bounds, counts, float(sum(values)))


@dataclass(frozen=True)
class Fleet:
    """One reading of the fleet for /metrics."""

    nodes: Counter[tuple[str, str]]  # (label, state)
    stale: Counter[tuple[str, str]]  # (label, action)
    last_seen: Histogram
    builds: Counter[tuple[str, str]]  # (label, state), every state
    build_seconds: dict[str, Histogram]  # by label, finished builds that started
    outbox_depth: int
    outbox_dropped: int
    activations: Counter[tuple[str, str]] = field(default_factory=Counter)  # (label, action)
    versions: dict[str, int] = field(default_factory=dict)  # versions kept, by label


def open_reader(config: Config) -> Database:
    """A read-only connection to the daemon's state database (one per request)."""
    return Database(db_path(config), readonly=True)


def read_fleet(config: Config, now: float | None = None) -> Fleet:
    """Nodes, builds and the outbox from the database; activations and versions from the store."""
    now = time.time() if now is None else now
    with open_reader(config) as db:
        nodes = Counter(
            {(lb or "", st): n for lb, st, n in db.rows(_NODES_BY_LABEL_STATE)},
        )
        stale = Counter({(lb or "", act or ""): n for lb, act, n in db.rows(_STALE_BY_ACTION)})
        ages = [max(0.0, float(a)) for (a,) in db.rows(_LAST_SEEN_AGE, (now,)) if a is not None]
        builds = Counter({(lb, st): n for lb, st, n in db.rows(_BUILDS_BY_STATE)})
        durations: dict[str, list[float]] = {}
        for lb, seconds in db.rows(_BUILD_DURATIONS):
            durations.setdefault(lb, []).append(max(0.0, float(seconds)))
        depth, dropped = db.outbox_pending, db.outbox_dropped()
    activations: Counter[tuple[str, str]] = Counter()
    kept = {}
    for label in sorted(config.labels):
        paths = label_paths(config, label)
        activations.update((label, e.action) for e in store.read_history(paths))
        kept[label] = len(store.version_ids(paths))
    return Fleet(
        nodes=nodes,
        stale=stale,
        last_seen=Histogram.of(ages, LAST_SEEN_BUCKETS),
        builds=builds,
        build_seconds={lb: Histogram.of(v, BUILD_BUCKETS) for lb, v in sorted(durations.items())},
        outbox_depth=depth,
        outbox_dropped=dropped,
        activations=activations,
        versions=kept,
    )


_NODES_BY_LABEL_STATE = "SELECT label, state, COUNT(*) FROM nodes GROUP BY label, state"
_STALE_BY_ACTION = (
    "SELECT label, json_extract(data, '$.action'), COUNT(*) FROM nodes "
    "WHERE state = 'stale' GROUP BY 1, 2"
)
# julianday reads the ISO time with its Z or offset; 2440587.5 is the Unix epoch's day.
_LAST_SEEN_AGE = (
    "SELECT ? - (julianday(json_extract(data, '$.last_seen')) - 2440587.5) * 86400.0 "
    "FROM nodes WHERE json_extract(data, '$.last_seen') IS NOT NULL"
)
_BUILDS_BY_STATE = "SELECT label, state, COUNT(*) FROM builds GROUP BY label, state"
_BUILD_DURATIONS = (
    "SELECT label, finished_at - started_at FROM builds WHERE state IN "
    "('succeeded', 'failed', 'interrupted') AND started_at IS NOT NULL AND finished_at IS NOT NULL"
)


def _stamp(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()


def _build_json(row: BuildRow | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "build_id": row.build_id,
        "result": row.state,
        "version": row.version,
        "error": row.error,
        "finished_at": _stamp(row.finished_at),
    }


def label_overview(config: Config) -> list[dict[str, Any]]:
    """/api/v1/labels: each configured label's active version, versions kept, last build."""
    out = []
    with open_reader(config) as db:
        for label in sorted(config.labels):
            paths = label_paths(config, label)
            last = db.builds(label=label, states=FINISHED, limit=1)
            out.append(
                {
                    "label": label,
                    "active": store.active_version(paths),
                    "versions_kept": len(store.version_ids(paths)),
                    "last_build": _build_json(last[-1] if last else None),
                }
            )
    return out


def label_versions(config: Config, label: str) -> list[dict[str, Any]]:
    """/api/v1/labels/{label}/versions: the rows of `netroot versions LABEL --json`."""
    return [info.as_json() for info in store.list_versions(label_paths(config, label))]
