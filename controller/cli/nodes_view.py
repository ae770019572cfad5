"""The fleet table of `netroot nodes`: pure functions from node states to rows and a summary.

No clock and no database here: the command passes `now` and the labels' active
versions, so every line of the table is a function of its inputs (and tested so).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from controller.cli.output import printable
from controller.events.fleet import STATE_ORDER, boot_duration_s
from controller.events.node_events import NodeState

# Only a running node has an uptime; a lost one's last boot is history.
RUNNING = frozenset({"up", "stale"})
HEADERS = (
    "MAC",
    "HOSTNAME",
    "LABEL",
    "VERSION",
    "ACTIVE",
    "STATE",
    "ACTION",
    "LAST SEEN",
    "UPTIME",
    "BOOT",
    "REASON",
)
SAME = "="  # ACTIVE column: the node runs the active version


def ago(then: datetime | None, now: datetime) -> str:
    """'3m ago'; '-' when never."""
    if then is None:
        return "-"
    return f"{duration((now - then).total_seconds())} ago"


def duration(seconds: float | None) -> str:
    """Two units at most: '45s', '12m', '3h5m', '4d2h'; '-' when unknown."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))  # a clock a little behind the node's is not negative time
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h}h{m}m" if m else f"{h}h"
    d, h = divmod(s // 3600, 24)
    return f"{d}d{h}h" if h else f"{d}d"


def uptime_s(node: NodeState, now: datetime) -> float | None:
    """Seconds since the controller got this boot's report, for a running node; else None."""
    if node.state not in RUNNING or node.booted_at is None:
        return None
    return max(0.0, (now - node.booted_at).total_seconds())


def row(node: NodeState, now: datetime) -> list[str]:
    """One table row; '-' where there is no data. Strings from the network are escaped."""
    version = node.version or "-"
    if node.active_version is None:
        active = "-"
    elif node.active_version == node.version:
        active = SAME
    else:
        active = node.active_version
    return [
        node.mac,
        printable(node.hostname or "-"),
        node.label or "-",
        version,
        active,
        node.state,
        node.action or "-",
        ago(node.last_seen, now),
        duration(uptime_s(node, now)),
        duration(boot_duration_s(node)),
        printable(node.reason),
    ]


def summary(nodes: Sequence[NodeState]) -> str:
    """'42 nodes: 2 lost, 3 stale, 37 up' (states in table order)."""
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node.state] = counts.get(node.state, 0) + 1
    order = [s for s in STATE_ORDER if s in counts] + sorted(set(counts) - set(STATE_ORDER))
    parts = ", ".join(f"{counts[s]} {s}" for s in order)
    noun = "node" if len(nodes) == 1 else "nodes"
    return f"{len(nodes)} {noun}: {parts}" if parts else f"0 {noun}"
