"""The fleet as `netroot nodes --json` and `/api/v1/nodes` show it: filters, order, one record.

Pure: no clock, no database. The CLI and the HTTP API both call `fleet()` and
`record()`, so the two give the same objects for the same stored nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, get_args

from controller.events.node_events import NodeState
from controller.events.payloads import NodePhase

# Problems first: an admin reads the top of each label's block.
STATE_ORDER: tuple[str, ...] = ("lost", "stale", "unknown", "dhcp", "booting", "up")
STATES: frozenset[str] = frozenset(get_args(NodePhase))
STATES_ALLOWED = ", ".join(STATE_ORDER)


@dataclass(frozen=True, kw_only=True)
class Filters:
    """Which nodes to show: states (empty: all) and one label (None: all)."""

    states: frozenset[str] = frozenset()
    label: str | None = None

    def keep(self, node: NodeState) -> bool:
        """True if the node passes every filter given."""
        if self.states and node.state not in self.states:
            return False
        return self.label is None or node.label == self.label


def check_states(names: Iterable[str]) -> frozenset[str]:
    """The node states named; ValueError naming the first unknown one and the allowed ones."""
    states = frozenset(names)
    unknown = sorted(states - STATES)
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a node state (allowed: {STATES_ALLOWED})")
    return states


def sort_key(node: NodeState) -> tuple[str, int, str]:
    """Label (unlabelled last), then problems first, then MAC."""
    rank = STATE_ORDER.index(node.state) if node.state in STATE_ORDER else len(STATE_ORDER)
    return (node.label or "\uffff", rank, node.mac)


def fleet(
    nodes: Iterable[NodeState], active: Mapping[str, str | None], filters: Filters
) -> list[NodeState]:
    """The nodes to show, sorted, each with its label's active version as the store has it."""
    shown = []
    for node in nodes:
        if not filters.keep(node):
            continue
        current = active.get(node.label) if node.label else None
        same = current == node.active_version  # a copy only where the store says otherwise
        shown.append(node if same else node.model_copy(update={"active_version": current}))
    return sorted(shown, key=sort_key)


def boot_duration_s(node: NodeState) -> float | None:
    """The last boot's duration as the agent's systemd-analyze reported it; None if not."""
    return None if node.boot_timing is None else node.boot_timing.total_s


def record(node: NodeState) -> dict[str, Any]:
    """One object of `nodes --json`: the node state and its boot duration.

    No field depends on when it is read (uptime is now - booted_at): two reads
    of an unchanged fleet, or the CLI and the API, give equal objects.
    """
    data = node.model_dump(mode="json")
    duration = boot_duration_s(node)
    data["boot_duration_s"] = None if duration is None else round(duration, 1)
    return data
