"""The status page for a person: `/`, its CSS and script, the node snapshot it starts from.

Plain files shipped in the package (daemon/web/static/), no build step and
nothing loaded from elsewhere: every response carries a Content-Security-Policy
of `default-src 'self'`, so the page runs only its own script and the script
only talks to this server. The page reads /api/v1/labels, the snapshot below,
then follows /api/v1/stream (daemon.web.stream) from the snapshot's seq.

The snapshot reads the journal's head *before* the nodes: every event after
that seq is then either already in the node states or still to come on the
stream, and node events carry the node's state after them, so applying one
twice changes nothing.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from importlib import resources
from typing import Any

from aiohttp import web

from controller.config.models import Config
from controller.daemon.db import Database, db_path
from controller.daemon.web.stream import EventStream
from controller.events.node_events import NodeState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]  # as api.Handler
CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
STATIC = {
    "index.html": "text/html",
    "status.css": "text/css",
    "status.js": "text/javascript",
}
SNAPSHOT_PATH = "/status/nodes"


def page_node(node: NodeState) -> dict[str, Any]:
    """The fields of a node the page shows (a 10,000-node snapshot stays small)."""
    return {
        "mac": node.mac,
        "hostname": node.hostname,
        "label": node.label,
        "state": node.state,
        "version": node.version,
        "action": node.action,
        "last_seen": node.last_seen.isoformat() if node.last_seen else None,
    }


def read_snapshot(config: Config) -> dict[str, Any]:
    """The journal's head, then every node (see the module docstring for the order)."""
    with Database(db_path(config), readonly=True) as db:
        known = db.rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'journal'")
        seq = int(db.rows("SELECT COALESCE(MAX(seq), 0) FROM journal")[0][0]) if known else 0
        nodes = [page_node(n) for n in db.nodes()]
    return {"seq": seq, "nodes": nodes}


def _static(name: str) -> bytes:
    return resources.files("controller.daemon.web").joinpath("static", name).read_bytes()


class StatusPage:
    """The page's routes over the daemon's context; `close()` ends the event streams."""

    def __init__(self, get_config: Callable[[], Config], pool: Executor) -> None:
        self.get_config = get_config  # the config of this moment (a reload swaps it)
        self.pool = pool
        self.files = {name: _static(name) for name in STATIC}  # a few kB, read once
        self.stream = EventStream(get_config())

    def routes(self) -> list[tuple[str, Handler]]:
        """GET routes of the page, its files, its snapshot and the event stream."""
        return [
            ("/", functools.partial(self._file, "index.html")),
            *(
                (f"/static/{name}", functools.partial(self._file, name))
                for name in STATIC
                if name != "index.html"
            ),
            (SNAPSHOT_PATH, self.snapshot),
            ("/api/v1/stream", self.stream.handle),
        ]

    async def _file(self, name: str, request: web.Request) -> web.Response:
        return web.Response(
            body=self.files[name],
            headers={**PAGE_HEADERS, "Content-Type": f"{STATIC[name]}; charset=utf-8"},
        )

    async def snapshot(self, request: web.Request) -> web.Response:
        """{"seq": the journal head, "nodes": [...]} for the page to start from."""
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(self.pool, read_snapshot, self.get_config())
        return web.json_response(body, headers={"Cache-Control": "no-cache"})

    def close(self) -> None:
        """End the open event streams (before the server waits for its handlers)."""
        self.stream.close()
