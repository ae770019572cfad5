"""The read-only JSON API and /metrics: one handler per route, their table, the OpenAPI document.

Handlers take what they need from the daemon's context on the event loop (the
current config, the broker link's state) and do their reading in a worker
thread of the server's own (daemon.web.fleet), so a slow disk never stalls the daemon. More
resources plug in as rows of `Endpoints.routes`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web

from controller.daemon.context import Context
from controller.daemon.mqtt import BrokerLink
from controller.daemon.web import fleet, metrics, page, versionfiles
from controller.daemon.web.openapi import API, openapi_document
from controller.daemon.web.params import BadParameter, Query, events_query, node_filters, node_mac

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Readers of their own: a burst of scrapes queues here, never in the default executor
# the daemon's other components hand their blocking work to.
READERS = 2

T = TypeVar("T")


def json_error(status: int, message: str) -> web.Response:
    """The API's error body: {"error": message}."""
    return web.json_response({"error": message}, status=status)


class Endpoints:
    """The handlers, over the daemon's context."""

    def __init__(self, ctx: Context, link: BrokerLink | None) -> None:
        self.ctx = ctx
        self.link = link
        collector = metrics.FleetCollector(self._read_fleet, self._connected, self._reports)
        self.registry = metrics.registry(collector)
        self.node_records = fleet.NodeRecords()
        self.pool = ThreadPoolExecutor(READERS, thread_name_prefix="http-read")
        self.page = page.StatusPage(lambda: self.ctx.config, self.pool)

    async def _off_loop(self, read: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(read, *args))

    def close(self) -> None:
        """Let the reading threads go (a read in progress finishes first)."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    def routes(self) -> list[tuple[str, Handler]]:
        """GET routes: path, handler (every other method is 405)."""
        return [
            ("/metrics", self.metrics),
            (f"{API}/labels", self.labels),
            (f"{API}/labels/{{label}}/versions", self.versions),
            (f"{API}/labels/{{label}}/versions/{{version}}/files/{{rel:.+}}", self.version_file),
            (f"{API}/nodes", self.nodes),
            (f"{API}/nodes/{{mac}}", self.node),
            (f"{API}/events", self.events),
            (f"{API}/rollouts", self.rollouts),
            (f"{API}/openapi.json", self.openapi),
            *self.page.routes(),  # /, its files, its snapshot, /api/v1/stream
        ]

    def _read_fleet(self) -> fleet.Fleet:
        return fleet.read_fleet(self.ctx.config)  # the config of this moment (a reload swaps it)

    def _connected(self) -> bool:
        return self.link is not None and self.link.connected

    def _reports(self) -> int:
        return self.ctx.nodes.accepted  # an int the loop writes: a consistent read from a thread

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text format."""
        body = await self._off_loop(metrics.exposition, self.registry)
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

    async def labels(self, request: web.Request) -> web.Response:
        """Every configured label."""
        rows = await self._off_loop(fleet.label_overview, self.ctx.config)
        return web.json_response(rows)

    async def versions(self, request: web.Request) -> web.Response:
        """A label's versions, as `netroot versions LABEL --json`."""
        config = self.ctx.config
        label = request.match_info["label"]
        if label not in config.labels:
            return json_error(404, f"no such label: {label!r}")
        rows = await self._off_loop(fleet.label_versions, config, label)
        return web.json_response(rows)

    async def version_file(self, request: web.Request) -> web.StreamResponse:
        """One file of a committed version (what a replica fetches)."""
        return await versionfiles.send_version_file(request, self.ctx.config)

    async def nodes(self, request: web.Request) -> web.Response:
        """The nodes, filtered, as `netroot nodes --json`."""
        try:
            filters = node_filters(Query.of(request.query.items()))
        except BadParameter as exc:
            return json_error(400, str(exc))
        body = await self._off_loop(self.node_records.render, self.ctx.config, filters)
        return web.Response(body=body, content_type="application/json")

    async def node(self, request: web.Request) -> web.Response:
        """One node, as an object of `netroot nodes --json`."""
        try:
            mac = node_mac(request.match_info["mac"])
        except BadParameter as exc:
            return json_error(400, str(exc))
        row = await self._off_loop(fleet.node_record, self.ctx.config, mac)
        if row is None:
            return json_error(404, f"no such node: {mac}")
        return web.json_response(row)

    async def events(self, request: web.Request) -> web.Response:
        """The journal since a time: a JSON array of the envelopes exactly as published."""
        try:
            query = events_query(Query.of(request.query.items()), datetime.now(UTC))
        except BadParameter as exc:
            return json_error(400, str(exc))
        found = await self._off_loop(fleet.journal, self.ctx.config, query)
        body = b"[" + b",".join(e.envelope for e in found) + b"]"
        return web.Response(body=body, content_type="application/json")

    async def rollouts(self, request: web.Request) -> web.Response:
        """Canary rollouts in progress and each label's last one, as `status --json`."""
        rows = await self._off_loop(fleet.rollouts, self.ctx.config)
        return web.json_response(rows)

    async def openapi(self, request: web.Request) -> web.Response:
        """The OpenAPI 3 document of these endpoints."""
        return web.json_response(openapi_document())
