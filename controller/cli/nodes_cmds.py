"""netroot nodes: the fleet table, read from the state database and the store (read-only)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic.dataclasses import dataclass

from controller.cli import nodes_view
from controller.cli.options import OPTIONS, Common, command, flag, load, opt
from controller.cli.output import emit_json, table
from controller.daemon.db import Database, db_path
from controller.events.node_events import NodeState
from controller.store.layout import label_paths
from controller.store.versions import active_version


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class NodesOptions(Common):
    """netroot nodes."""

    stale: bool = flag("only nodes that must remount or reboot")
    lost: bool = flag("only nodes that went offline or silent")
    label: str | None = opt(metavar="LABEL", help="only the nodes of this label")

    def filters(self) -> nodes_view.Filters:
        """--stale and --lost add up (either state); --label narrows."""
        states = {s for s, on in (("stale", self.stale), ("lost", self.lost)) if on}
        return nodes_view.Filters(states=frozenset(states), label=self.label)


def _read_nodes(opts: NodesOptions) -> tuple[list[NodeState], dict[str, str | None]]:
    """The stored nodes and, for each of their labels, the store's active version."""
    config = load(opts)
    path = db_path(config)
    nodes: list[NodeState] = []
    if path.exists():  # no database yet: the daemon never ran, no node is known
        # Read-only: works with the daemon stopped, and never competes with its writes.
        with Database(path, readonly=True) as db:
            nodes = db.nodes(label=opts.label)
    labels = {n.label for n in nodes if n.label}
    # The store's history says what new boots get, whether or not the daemon has seen it.
    active = {label: active_version(label_paths(config, label)) for label in labels}
    return nodes, active


@command(
    "nodes",
    NodesOptions,
    help="the fleet: each node's version, state, last seen and uptime",
    description="One row per node, by label, problems first (lost, stale), then MAC. "
    "ACTIVE is the label's active version in the store ('=' when the node runs it); "
    "'-' where nothing reported the value. Reads the state database read-only.",
)
def cmd_nodes(opts: NodesOptions) -> int:
    """The fleet table (or --json objects) and a one-line summary by state."""
    nodes, active = _read_nodes(opts)
    shown = nodes_view.fleet(nodes, active, opts.filters())
    if opts.json:
        emit_json([nodes_view.record(n) for n in shown])
        return 0
    if not shown:
        print("no nodes known yet" if not nodes and not opts.label else "no nodes match")
        return 0
    now = datetime.now(UTC)
    table(nodes_view.HEADERS, [nodes_view.row(n, now) for n in shown])
    print(nodes_view.summary(shown))
    return 0
