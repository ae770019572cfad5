"""/metrics and /api/v1/nodes latency with 10,000 nodes, against a plain SQLite read.

The nodes are written as the daemon writes them (Database.transaction,
put_node) into a real state database beside a real store with one active
version; the server is the daemon's own (daemon.web: Endpoints, build_app) on
a loopback port, asked by an aiohttp client one request at a time. The
baseline, in the same run: `SELECT data FROM nodes` on a fresh read-only
connection (what any reader of the table pays). Prints p50/p99 and the p50
ratio; asserts nothing timed.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from common import Workspace, make_root_tree

from controller.config.load import load_config
from controller.config.models import Config
from controller.daemon.context import Context
from controller.daemon.db import Database, db_path
from controller.daemon.emit import Emitter
from controller.daemon.images import ImageBook
from controller.daemon.nodebook import NodeBook
from controller.daemon.web.api import Endpoints
from controller.daemon.web.server import build_app
from controller.events.node_events import NodeState
from controller.events.topics import Topics

BOOT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def mac_of(i: int) -> str:
    """A distinct unicast MAC per node."""
    return f"52:54:00:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"


def node(i: int, v1: str, v2: str, now: datetime) -> NodeState:
    """Most nodes up on the active version; some stale, lost or just leased."""
    kind = i % 20
    fields: dict[str, Any] = {
        "mac": mac_of(i),
        "label": "demo",
        "hostname": f"n{i:05d}",
        "ip": f"10.{(i >> 16) & 0xFF}.{(i >> 8) & 0xFF}.{i & 0xFF}",
        "last_seen": now - timedelta(seconds=i % 300),
    }
    if kind == 19:
        return NodeState.model_validate({**fields, "state": "dhcp"})
    running = {
        "boot_id": BOOT_ID,
        "kernel": "6.1.0-28-amd64",
        "booted_at": now - timedelta(hours=3),
        "root": {"fstype": "overlay", "source": "overlay", "lower": "10.0.0.1:/demo"},
        "boot_timing": {"kernel_s": 2.1, "initrd_s": 6.5, "userspace_s": 14.2, "total_s": 22.8},
    }
    if kind == 18:
        return NodeState.model_validate({**fields, **running, "state": "lost", "version": v1})
    if kind < 3:
        stale = {"action": "reboot", "reason": f"runs {v1}, active is {v2}"}
        return NodeState.model_validate(
            {**fields, **running, **stale, "state": "stale", "version": v1, "active_version": v2}
        )
    return NodeState.model_validate(
        {**fields, **running, "state": "up", "version": v2, "active_version": v2}
    )


def fill(config: Config, count: int, v1: str, v2: str) -> None:
    """count nodes through the daemon's own writes, one transaction."""
    now = datetime.now(UTC)
    with Database(db_path(config)) as db, db.transaction() as tx:
        for i in range(count):
            tx.put_node(node(i, v1, v2, now))


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return statistics.median(seconds) * 1000, cuts[98] * 1000


async def sample(n: int, once: Callable[[], Awaitable[object]]) -> list[float]:
    """n timings of once (after one warm-up)."""
    await once()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await once()
        out.append(time.perf_counter() - t0)
    return out


def plain_read(path: Path) -> int:
    """The baseline: every row's data, as stored, on a fresh read-only connection."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return len(conn.execute("SELECT data FROM nodes").fetchall())
    finally:
        conn.close()


async def measure(config: Config, requests: int) -> dict[str, list[float]]:
    """Latencies of each endpoint and of the baseline."""
    db = Database(db_path(config))
    emitter = Emitter(Topics(config.mqtt.topic_prefix))
    book = NodeBook(db, emitter, config)
    endpoints = Endpoints(
        Context(config, None, db, emitter, book, ImageBook(db, emitter, book)), None
    )
    runner = web.AppRunner(build_app(endpoints.routes(), None), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    results: dict[str, list[float]] = {}
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:

            def getter(path: str) -> Callable[[], Awaitable[bytes]]:
                async def once() -> bytes:
                    async with session.get(path) as response:
                        assert response.status == 200, await response.text()
                        return await response.read()

                return once

            path = db_path(config)
            results["SELECT data FROM nodes"] = await sample(
                requests, lambda: asyncio.to_thread(plain_read, path)
            )
            for route in ("/metrics", "/api/v1/nodes", "/api/v1/nodes?stale=1"):
                results[route] = await sample(requests, getter(route))
            nodes = await getter("/api/v1/nodes")()
            print(f"/api/v1/nodes body: {len(nodes) / 1e6:.1f} MB")
    finally:
        await runner.cleanup()
        endpoints.close()
        db.close()
    return results


def main() -> None:
    """Fill, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        ws = Workspace(Path(tmp), keep_versions=3)
        make_root_tree(ws.tree)
        ws.write()
        ws.run("build", ws.label, "--activate")
        config = load_config(ws.config)
        v2 = ws.active()
        assert v2 is not None
        fill(config, args.nodes, "20250301T120000.000Z-0000aaaa", v2)
        results = asyncio.run(measure(config, args.requests))
    base_p50, _ = percentiles(results["SELECT data FROM nodes"])
    print(f"{args.nodes} nodes, {args.requests} requests each (one at a time)")
    print(f"{'':26} {'p50 ms':>8} {'p99 ms':>8} {'p50 ratio':>9}")
    for name, seconds in results.items():
        p50, p99 = percentiles(seconds)
        print(f"{name:26} {p50:8.1f} {p99:8.1f} {p50 / base_p50:8.1f}x")


if __name__ == "__main__":
    main()
