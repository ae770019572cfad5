"""netroot nodes: the fleet table, read from the state database and the store (read-only)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic.dataclasses import dataclass

from controller.cli import nodes_view
from controller.cli.options import OPTIONS, Common, command, flag, load, opt
from controller.cli.output import emit_json, table
from controller.config.models import Config
from controller.daemon import fleetstore
from controller.daemon.db import Database, db_path
from controller.daemon.web.fleet import stored_nodes
from controller.events.fleet import Filters, fleet, record
from controller.events.node_events import NodeState


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class NodesOptions(Common):
    """netroot nodes."""

    stale: bool = flag("only nodes that must remount or reboot")
    lost: bool = flag("only nodes that went offline or silent")
    label: str | None = opt(metavar="LABEL", help="only the nodes of this label")
    fleet: bool = flag(
        "also the nodes other boot servers track (replicas: docs/design.md §17), "
        "with a SERVER column (--json: a `server` field)"
    )

    def filters(self) -> Filters:
        """--stale and --lost add up (either state); --label narrows."""
        states = {s for s, on in (("stale", self.stale), ("lost", self.lost)) if on}
        return Filters(states=frozenset(states), label=self.label)


@command(
    "nodes",
    NodesOptions,
    help="the fleet: each node's version, state, last seen and uptime",
    description="One row per node, by label, problems first (lost, stale), then MAC. "
    "ACTIVE is the label's active version in the store ('=' when the node runs it); "
    "BOOT is the last boot's duration the node's agent reported; "
    "'-' where nothing reported the value. Reads the state database read-only.",
)
def cmd_nodes(opts: NodesOptions) -> int:
    """The fleet table (or --json objects, as /api/v1/nodes) and a one-line summary by state."""
    filters = opts.filters()
    config = load(opts)
    shown = stored_nodes(config, filters)
    if opts.fleet:
        return _whole_fleet(config, filters, shown, as_json=opts.json)
    if opts.json:
        emit_json([record(n) for n in shown])
        return 0
    if not shown:
        unfiltered = not filters.states and filters.label is None
        print("no nodes known yet" if unfiltered else "no nodes match")
        return 0
    now = datetime.now(UTC)
    table(nodes_view.HEADERS, [nodes_view.row(n, now) for n in shown])
    print(nodes_view.summary(shown))
    return 0


def _whole_fleet(config: Config, filters: Filters, local: list[NodeState], *, as_json: bool) -> int:
    """This server's nodes and the other servers' (their retained states, as last heard)."""
    path = db_path(config)
    remote: list[tuple[str, NodeState]] = []
    if path.exists():
        with Database(path, readonly=True) as db:
            remote = fleetstore.remote_nodes(db)
    others = fleet(
        (n for _, n in remote), {n.label: n.active_version for _, n in remote if n.label}, filters
    )
    server_of = {n.mac: s for s, n in remote}
    # A node that moved between servers is where it was seen last.
    seen = {n.mac: n.last_seen for n in others}
    rows = [
        (config.replication.name, n)
        for n in local
        if n.mac not in seen or _newer(n.last_seen, seen[n.mac])
    ]
    mine = {n.mac for _, n in rows}
    rows += [(server_of[n.mac], n) for n in others if n.mac in server_of and n.mac not in mine]
    if as_json:
        emit_json([{"server": server, **record(n)} for server, n in rows])
        return 0
    if not rows:
        print("no nodes known yet on any server")
        return 0
    now = datetime.now(UTC)
    table(
        ("SERVER", *nodes_view.HEADERS), [[server, *nodes_view.row(n, now)] for server, n in rows]
    )
    print(nodes_view.summary([n for _, n in rows]))
    return 0


def _newer(mine: datetime | None, theirs: datetime | None) -> bool:
    return theirs is None or (mine is not None and mine >= theirs)
