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
from typing import Any, TypeVar

from aiohttp import web

from controller import __version__
from controller.daemon.context import Context
from controller.daemon.mqtt import BrokerLink
from controller.daemon.web import fleet, metrics, page

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
API = "/api/v1"
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
        collector = metrics.FleetCollector(self._read_fleet, self._connected)
        self.registry = metrics.registry(collector)
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
            (f"{API}/openapi.json", self.openapi),
            *self.page.routes(),  # /, its files, its snapshot, /api/v1/stream
        ]

    def _read_fleet(self) -> fleet.Fleet:
        return fleet.read_fleet(self.ctx.config)  # the config of this moment (a reload swaps it)

    def _connected(self) -> bool:
        return self.link is not None and self.link.connected

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

    async def openapi(self, request: web.Request) -> web.Response:
        """The OpenAPI 3 document of these endpoints."""
        return web.json_response(openapi_document())


def _get(summary: str, schema: dict[str, Any], *extra: dict[str, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
        "401": {"$ref": "#/components/responses/Unauthorized"},
    }
    for more in extra:
        responses.update(more)
    return {"get": {"summary": summary, "responses": responses}}


def openapi_document() -> dict[str, Any]:
    """A hand-written OpenAPI 3.0 document for /metrics and /api/v1."""
    nullable_str = {"type": "string", "nullable": True}
    label_row = {
        "type": "object",
        "required": ["label", "active", "versions_kept", "last_build"],
        "properties": {
            "label": {"type": "string"},
            "active": nullable_str,
            "versions_kept": {"type": "integer"},
            "last_build": {
                "type": "object",
                "nullable": True,
                "properties": {
                    "build_id": {"type": "string"},
                    "result": {"type": "string", "enum": list(fleet.FINISHED)},
                    "version": nullable_str,
                    "error": nullable_str,
                    "finished_at": {**nullable_str, "format": "date-time"},
                },
            },
        },
    }
    version_row = {
        "type": "object",
        "description": "the version's manifest, as `netroot versions LABEL --json`",
        "required": ["version", "active", "rollback_target"],
        "properties": {
            "version": {"type": "string"},
            "active": {"type": "boolean"},
            "rollback_target": {"type": "boolean"},
        },
        "additionalProperties": True,
    }
    not_found = {"404": {"$ref": "#/components/responses/NotFound"}}
    error = {"type": "object", "properties": {"error": {"type": "string"}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "netroot fleet view", "version": __version__},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Unauthorized": {
                    "description": "http.token_file is set and the bearer token is missing",
                    "content": {"application/json": {"schema": error}},
                },
                "NotFound": {
                    "description": "no such label",
                    "content": {"application/json": {"schema": error}},
                },
            },
        },
        "security": [{}, {"bearer": []}],
        "paths": {
            "/metrics": {
                "get": {
                    "summary": "Prometheus text format",
                    "responses": {"200": {"description": "OK", "content": {"text/plain": {}}}},
                }
            },
            f"{API}/labels": _get("every configured label", {"type": "array", "items": label_row}),
            f"{API}/labels/{{label}}/versions": {
                **_get(
                    "a label's versions, oldest first",
                    {"type": "array", "items": version_row},
                    not_found,
                ),
                "parameters": [
                    {"name": "label", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
            },
            f"{API}/openapi.json": _get("this document", {"type": "object"}),
        },
    }
