"""The nodes table of the state database: each node's last state, by MAC."""

from __future__ import annotations

import sqlite3
import time

from controller.events.node_events import NodeState

# One buffered nodes row: mac, label, state, data (the NodeState as JSON), updated_at.
NodeRow = tuple[str, str | None, str, str, float]


class NodeWrites:
    """A transaction's part in the nodes table (`db.Tx` holds the fields)."""

    conn: sqlite3.Connection
    # Buffered and written with executemany at commit (the last state per MAC):
    # a batch of node reports touches thousands of rows.
    _nodes: dict[str, NodeRow]

    def put_node(self, state: NodeState, data: str | None = None) -> str:
        """Insert or replace a node's state; returns its JSON (data, if given, is it)."""
        data = data or state.model_dump_json()
        self._nodes[state.mac] = (state.mac, state.label, state.state, data, time.time())
        return data

    def delete_node(self, mac: str) -> None:
        """Forget a node (its buffered state included)."""
        self._nodes.pop(mac, None)
        self.conn.execute("DELETE FROM nodes WHERE mac = ?", (mac,))

    def _flush_nodes(self) -> None:
        if self._nodes:
            self.conn.executemany(
                "INSERT INTO nodes (mac, label, state, data, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (mac) DO UPDATE SET label = excluded.label, state = excluded.state, "
                "data = excluded.data, updated_at = excluded.updated_at",
                self._nodes.values(),
            )
            self._nodes.clear()


class NodeReads:
    """The database's reading of the nodes table (`db.Database` holds the connection)."""

    _conn: sqlite3.Connection

    def nodes(self, *, label: str | None = None) -> list[NodeState]:
        """Every known node (of one label), by MAC."""
        if label is None:
            rows = self._conn.execute("SELECT data FROM nodes ORDER BY mac").fetchall()
        else:
            rows = self._conn.execute(
                "SELECT data FROM nodes WHERE label = ? ORDER BY mac", (label,)
            ).fetchall()
        return [NodeState.model_validate_json(r[0]) for r in rows]

    def node_updated_at(self) -> dict[str, float]:
        """When each node's state was last stored (for benchmarks and `status`)."""
        return dict(self._conn.execute("SELECT mac, updated_at FROM nodes").fetchall())
