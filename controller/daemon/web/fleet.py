"""What the HTTP server reports, read at request time from the state database and the store.

Every function here blocks (SQLite, manifest files): the server runs them in a
worker thread on a read-only connection of their own (WAL readers never block
the daemon's writer), never on the daemon's event loop.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from controller.config.models import Config
from controller.daemon import rolloutstore
from controller.daemon.builds import BuildRow, BuildState
from controller.daemon.db import Database, db_path
from controller.daemon.journal import JournalEvent, JournalQuery
from controller.events import fleet as view
from controller.events.node_events import NodeState
from controller.store import versions as store
from controller.store.layout import label_paths

FINISHED: tuple[BuildState, ...] = ("succeeded", "failed", "interrupted")
# Seconds since a node was last heard from: heartbeats (60 s) up to a week of silence.
LAST_SEEN_BUCKETS = (30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 6 * 3600.0, 86400.0, 7 * 86400.0)
BUILD_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
# A diskless boot, firmware to the default target: tens of seconds; minutes when it goes wrong.
BOOT_BUCKETS = (10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0)
# Each phase of it: the kernel in seconds, the initramfs (DHCP, NFS) and userspace longer.
PHASE_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
BOOT_PHASES = ("kernel", "initrd", "userspace")


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
    # The last boot each node's agent timed: total by label, and each phase.
    boot_seconds: dict[str, Histogram] = field(default_factory=dict)
    boot_phase_seconds: dict[str, Histogram] = field(default_factory=dict)


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
        boots, phases = _boot_timings(db.rows(_BOOT_TIMINGS))
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
        boot_seconds={lb: Histogram.of(v, BOOT_BUCKETS) for lb, v in sorted(boots.items())},
        boot_phase_seconds={p: Histogram.of(phases[p], PHASE_BUCKETS) for p in BOOT_PHASES},
    )


def _boot_timings(
    rows: list[tuple[Any, ...]],
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Totals by label and the phases' figures (a phase a node did not report is left out)."""
    totals: dict[str, list[float]] = {}
    phases: dict[str, list[float]] = {p: [] for p in BOOT_PHASES}
    for label, total, *each in rows:
        totals.setdefault(label or "", []).append(float(total))
        for phase, seconds in zip(BOOT_PHASES, each, strict=True):
            if seconds is not None:
                phases[phase].append(float(seconds))
    return totals, phases


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
_BOOT_TIMINGS = (
    "SELECT label, json_extract(data, '$.boot_timing.total_s'), "
    "json_extract(data, '$.boot_timing.kernel_s'), json_extract(data, '$.boot_timing.initrd_s'), "
    "json_extract(data, '$.boot_timing.userspace_s') "
    "FROM nodes WHERE json_extract(data, '$.boot_timing.total_s') IS NOT NULL"
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


def _active_versions(config: Config, nodes: list[NodeState]) -> dict[str, str | None]:
    # The store's history says what new boots get, whether or not the daemon has seen it.
    labels = {n.label for n in nodes if n.label}
    return {label: store.active_version(label_paths(config, label)) for label in labels}


def _nodes_sql(
    filters: view.Filters, mac: str | None, columns: str = "data"
) -> tuple[str, list[object]]:
    # The filters again in SQL: only the rows shown are parsed (10,000 nodes, one label).
    where: list[str] = []
    args: list[object] = []
    if mac is not None:
        where.append("mac = ?")
        args.append(mac)
    if filters.label is not None:
        where.append("label = ?")
        args.append(filters.label)
    if filters.states:
        where.append(f"state IN ({', '.join('?' * len(filters.states))})")
        args.extend(sorted(filters.states))
    # Only fixed clauses and placeholders are joined: every value is a bound parameter.
    sql = f"SELECT {columns} FROM nodes" + (f" WHERE {' AND '.join(where)}" if where else "")  # noqa: S608
    return sql, args


def stored_nodes(
    config: Config, filters: view.Filters, *, mac: str | None = None
) -> list[NodeState]:
    """The stored nodes `netroot nodes` and /api/v1/nodes show, sorted, with active versions.

    Read-only: works with the daemon stopped, and never competes with its writes.
    No database yet (the daemon never ran): no node is known.
    """
    path = db_path(config)
    if not path.exists():
        return []
    sql, args = _nodes_sql(filters, mac)
    with Database(path, readonly=True) as db:
        nodes = [NodeState.model_validate_json(data) for (data,) in db.rows(sql, args)]
    return view.fleet(nodes, _active_versions(config, nodes), filters)


@dataclass(frozen=True, slots=True)
class _Rendered:
    data: str  # the stored row it was made from
    active: str | None  # the label's active version it shows
    key: tuple[str, int, str]  # events.fleet.sort_key
    json: bytes  # events.fleet.record, serialised


class NodeRecords:
    """/api/v1/nodes: the records of `netroot nodes --json`, each kept serialised by MAC.

    Parsing, validating and dumping 10,000 node states took 65 x as long as
    reading their rows; a node's record changes only when its stored row or its
    label's active version does, so only those are made again (by the same
    events.fleet functions as the CLI's), the rest reused. Requests run in two
    reader threads: each key is replaced whole, and only an unfiltered read,
    which sees every node, drops the ones gone.
    """

    def __init__(self) -> None:
        self._by_mac: dict[str, _Rendered] = {}

    def render(self, config: Config, filters: view.Filters) -> bytes:
        """The JSON array of the records the filters keep, in the CLI's order."""
        path = db_path(config)
        if not path.exists():
            return b"[]"
        sql, args = _nodes_sql(filters, None, columns="mac, label, data")
        with Database(path, readonly=True) as db:
            rows = db.rows(sql, args)
        labels = {label for _, label, _ in rows if label}
        active = {label: store.active_version(label_paths(config, label)) for label in labels}
        fresh: dict[str, _Rendered] = {}
        for mac, label, data in rows:
            current = active.get(label) if label else None
            done = self._by_mac.get(mac)
            if done is None or done.active != current or done.data != data:
                (node,) = view.fleet([NodeState.model_validate_json(data)], active, view.Filters())
                record = json.dumps(view.record(node), separators=(",", ":")).encode()
                done = _Rendered(data, current, view.sort_key(node), record)
                self._by_mac[mac] = done
            fresh[mac] = done
        if filters == view.Filters():
            self._by_mac = fresh
        shown = sorted(fresh.values(), key=lambda r: r.key)
        return b"[" + b",".join(r.json for r in shown) + b"]"


def node_record(config: Config, mac: str) -> dict[str, Any] | None:
    """/api/v1/nodes/{mac}: one node's object (None: not known); mac in canonical form."""
    found = stored_nodes(config, view.Filters(), mac=mac)
    return view.record(found[0]) if found else None


def journal(config: Config, query: JournalQuery) -> list[JournalEvent]:
    """/api/v1/events: the journalled events the query selects, in publication order."""
    with open_reader(config) as db:
        return db.journal_events(query)


def rollout_records(db: Database) -> list[dict[str, Any]]:
    """Canary rollouts in progress, and the last one of each label (`status --json`'s
    `rollouts` and /api/v1/rollouts): the rollout's model, and how many canaries passed."""
    try:
        recent = rolloutstore.recent(db, limit=50)
    except sqlite3.OperationalError:  # a database no daemon of this version opened yet
        return []
    shown, labels = [], set()
    for rollout in recent:
        if rollout.phase != "running" and rollout.label in labels:
            continue
        labels.add(rollout.label)
        passed = sum(c.phase == "passed" for c in rollout.canaries)
        shown.append({**rollout.model_dump(mode="json"), "passed": passed})
    return shown


def rollouts(config: Config) -> list[dict[str, Any]]:
    """/api/v1/rollouts (no database yet: none)."""
    if not db_path(config).exists():
        return []
    with open_reader(config) as db:
        return rollout_records(db)
