"""netroot nodes: the fleet table, read from the state database and the store (read-only)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic.dataclasses import dataclass

from controller.cli import nodes_view
from controller.cli.options import OPTIONS, Common, command, flag, load, opt
from controller.cli.output import emit_json, table
from controller.daemon.web.fleet import stored_nodes
from controller.events.fleet import Filters, record


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class NodesOptions(Common):
    """netroot nodes."""

    stale: bool = flag("only nodes that must remount or reboot")
    lost: bool = flag("only nodes that went offline or silent")
    label: str | None = opt(metavar="LABEL", help="only the nodes of this label")

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
    shown = stored_nodes(load(opts), filters)
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
