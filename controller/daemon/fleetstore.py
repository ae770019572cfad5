"""Nodes other boot servers track, as their retained states say (docs/design.md §17).

A node is tracked by the server it booted from; every controller also keeps
the others' node states, heard through the broker bridge, in the
`fleet_nodes` table, so `netroot nodes --fleet` on any server lists the
whole fleet. Rows are the states as published (a node.state payload), keyed
by MAC and the server that published them; an emptied retained state drops
the node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.events.node_events import NodeState

if TYPE_CHECKING:  # db.py imports the schema from here
    from controller.daemon.db import Database, Tx

FLEET_SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_nodes (
    mac TEXT NOT NULL,
    server TEXT NOT NULL,
    data TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (mac, server)
);
"""


def put(tx: Tx, server: str, state: NodeState) -> None:
    """The node's state as `server` published it; the same MAC on another server goes
    (a node tracked by two servers is where it booted last)."""
    tx.conn.execute("DELETE FROM fleet_nodes WHERE mac = ? AND server != ?", (state.mac, server))
    tx.conn.execute(
        "INSERT INTO fleet_nodes (mac, server, data, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (mac, server) DO UPDATE SET data = excluded.data, "
        "updated_at = excluded.updated_at",
        (state.mac, server, state.model_dump_json(), tx.now),
    )


def drop(tx: Tx, mac: str) -> None:
    """Forget a node another server no longer tracks."""
    tx.conn.execute("DELETE FROM fleet_nodes WHERE mac = ?", (mac,))


def remote_nodes(db: Database) -> list[tuple[str, NodeState]]:
    """(server, state) of every node other servers track, by server then MAC."""
    rows = db.rows("SELECT server, data FROM fleet_nodes ORDER BY server, mac")
    return [(server, NodeState.model_validate_json(data)) for server, data in rows]
