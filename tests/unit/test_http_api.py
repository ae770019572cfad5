"""The node, event and metrics endpoints over a real state database (no daemon, no broker):
filters, parameter errors, the journal's order and bound, the OpenAPI document."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families
from support import REPO

from controller.config.load import load_config
from controller.daemon.context import Context
from controller.daemon.db import Database, db_path
from controller.daemon.emit import Emitter
from controller.daemon.images import ImageBook
from controller.daemon.nodebook import NodeBook
from controller.daemon.web.api import Endpoints
from controller.daemon.web.openapi import openapi_document
from controller.daemon.web.server import build_app
from controller.events.fleet import Filters, fleet, record
from controller.events.node_events import NodeState
from controller.events.topics import Topics

BOOT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
V1 = "20250301T120000.000Z-0000aaaa"


def _node(tail: str, state: str, label: str | None = "demo", **kw: Any) -> NodeState:
    fields: dict[str, Any] = {"mac": f"52:54:00:00:00:{tail}", "state": state, "label": label}
    if state in ("up", "stale"):
        fields.update(version=V1, boot_id=BOOT_ID)
    if state == "stale":
        fields.update(action="reboot")
    return NodeState.model_validate({**fields, **kw})


NODES = [
    _node("01", "up", boot_timing={"kernel_s": 2, "initrd_s": 5, "userspace_s": 14, "total_s": 21}),
    _node("02", "stale", boot_timing={"kernel_s": 2, "userspace_s": 70, "total_s": 72}),
    _node("03", "lost"),
    _node("04", "up", label="other"),
    _node("05", "dhcp", label=None),
]


def _envelope(seq: int, kind: str) -> bytes:
    return json.dumps({"type": f"org.netroot.{kind}", "seq": seq}).encode()


@dataclass
class Api:
    client: TestClient[web.Request, web.Application]
    endpoints: Endpoints
    t0: datetime  # the first journalled event's time, 40 minutes before the fixture ran

    async def get(self, path: str) -> tuple[int, Any]:
        response = await self.client.get(path)
        text = await response.text()
        return response.status, text if path == "/metrics" else json.loads(text)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    path = tmp_path / "netroot.toml"
    path.write_text('state_dir = "state"\n[labels.demo]\nrecipe = "demo.toml"\n')
    config = load_config(path)
    db = Database(db_path(config))
    # Read when the test runs, not at collection: a long suite runs this module much later.
    t0 = datetime.now(UTC) - timedelta(minutes=40)
    with db.transaction() as tx:
        for node in NODES:
            tx.put_node(node)
        for i, kind in enumerate(["node.booted", "image.activated", "node.stale", "node.lost"]):
            label = None if kind == "node.lost" else "demo"
            at = t0 + timedelta(minutes=i * 10)  # 40, 30, 20, 10 minutes ago
            tx.emit_event(
                "netroot/events/x", _envelope(i, kind), at=at, event_type=f"org.netroot.{kind}",
                subject=None, label=label,
            )  # fmt: skip
    emitter = Emitter(Topics(config.mqtt.topic_prefix))
    nodes = NodeBook(db, emitter, config)
    ctx = Context(config, path, db, emitter, nodes, ImageBook(db, emitter, nodes))
    endpoints = Endpoints(ctx, None)
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(build_app(endpoints.routes(), None))
    )
    await client.start_server()
    try:
        yield Api(client, endpoints, t0)
    finally:
        await client.close()
        endpoints.close()
        db.close()


def _macs(rows: list[dict[str, Any]]) -> list[str]:
    return [r["mac"][-2:] for r in rows]


async def test_nodes_are_the_records_of_the_cli_in_its_order_and_filtered(api: Api) -> None:
    status, rows = await api.get("/api/v1/nodes")
    assert status == 200
    assert rows == [record(n) for n in fleet(NODES, {}, Filters())]
    assert _macs(rows) == ["03", "02", "01", "04", "05"]
    assert rows[2]["boot_duration_s"] == 21.0
    status, body = await api.get("/api/v1/nodes?label=demo")
    assert status == 200, body
    assert _macs(body) == ["03", "02", "01"]
    assert _macs((await api.get("/api/v1/nodes?state=up"))[1]) == ["01", "04"]
    assert _macs((await api.get("/api/v1/nodes?state=up,lost&label=demo"))[1]) == ["03", "01"]
    assert _macs((await api.get("/api/v1/nodes?state=lost&state=dhcp"))[1]) == ["03", "05"]
    assert _macs((await api.get("/api/v1/nodes?stale=1"))[1]) == ["02"]
    assert (await api.get("/api/v1/nodes?label=nothere"))[1] == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("state=gone", "state: 'gone' is not a node state (allowed: lost, stale,"),
        ("stale=maybe", "stale: 'maybe' is not a flag"),
        ("label=Bad/Label", "label: 'Bad/Label' is not a label (allowed:"),
        ("label=a&label=b", "label: given 2 times"),
    ],
)
async def test_bad_node_filters_are_400_naming_the_parameter(
    api: Api, query: str, message: str
) -> None:
    status, body = await api.get(f"/api/v1/nodes?{query}")
    assert status == 400
    assert body["error"].startswith(message)
    assert "\n" not in body["error"]


async def test_one_node_by_mac_in_any_case_404_when_unknown_400_when_malformed(api: Api) -> None:
    status, body = await api.get("/api/v1/nodes/52:54:00:00:00:02")
    assert (status, body) == (200, record(NODES[1]))
    assert await api.get("/api/v1/nodes/52-54-00-00-00-02") == (200, body)
    assert (await api.get("/api/v1/nodes/52:54:00:00:00:0A".upper()))[0] == 404
    status, body = await api.get("/api/v1/nodes/52:54:00:00:00:0b")
    assert (status, body) == (404, {"error": "no such node: 52:54:00:00:00:0b"})
    for bad in ("nonsense", "01:00:5e:00:00:01", "00:00:00:00:00:00"):
        status, body = await api.get(f"/api/v1/nodes/{bad}")
        assert status == 400, bad
        assert body["error"].startswith(f"mac: '{bad}' is "), body


async def test_events_since_in_order_filtered_and_bounded(api: Api) -> None:
    status, events = await api.get("/api/v1/events?since=1h")
    assert status == 200
    assert [e["seq"] for e in events] == [0, 1, 2, 3]  # the envelopes as published
    since = (api.t0 + timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%S")
    assert [e["seq"] for e in (await api.get(f"/api/v1/events?since={since}"))[1]] == [2, 3]
    assert [e["seq"] for e in (await api.get("/api/v1/events?since=1h&type=node."))[1]] == [
        0,
        2,
        3,
    ]
    assert [e["seq"] for e in (await api.get("/api/v1/events?since=1h&label=demo"))[1]] == [0, 1, 2]
    assert [e["seq"] for e in (await api.get("/api/v1/events?since=1h&limit=2"))[1]] == [0, 1]
    assert (await api.get("/api/v1/events?since=1m"))[1] == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "since: required"),
        ("since=yesterday", "since: 'yesterday' is not a time (allowed: an ISO 8601 time"),
        ("since=1h&type=NODE", "type: 'NODE' is not an event type"),
        ("since=1h&limit=0", "limit: '0' is not a number from 1 to 10000"),
        ("since=1h&limit=10001", "limit: '10001' is not a number from 1 to 10000"),
    ],
)
async def test_bad_event_queries_are_400_naming_the_parameter(
    api: Api, query: str, message: str
) -> None:
    status, body = await api.get(f"/api/v1/events?{query}")
    assert status == 400
    assert body["error"].startswith(message), body
    assert "\n" not in body["error"]


async def test_metrics_count_reports_and_boot_timings(api: Api) -> None:
    api.endpoints.ctx.nodes.accepted = 7
    status, text = await api.get("/metrics")
    assert status == 200
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples["netroot_node_reports_total", frozenset()] == 7
    demo = frozenset({("label", "demo")})
    assert samples["netroot_node_boot_seconds_count", demo] == 2
    assert samples["netroot_node_boot_seconds_sum", demo] == 93
    assert samples["netroot_node_boot_seconds_bucket", demo | {("le", "30.0")}] == 1
    assert samples["netroot_node_boot_seconds_bucket", demo | {("le", "90.0")}] == 2
    for phase, count, total in (("kernel", 2, 4), ("initrd", 1, 5), ("userspace", 2, 84)):
        labels = frozenset({("phase", phase)})
        assert samples["netroot_node_boot_phase_seconds_count", labels] == count
        assert samples["netroot_node_boot_phase_seconds_sum", labels] == total


def test_the_openapi_document_is_valid_and_covers_every_api_route(tmp_path: Path) -> None:
    document = openapi_document()
    validate(document)  # a third-party OpenAPI 3.1 validator, JSON Schema included
    path = tmp_path / "netroot.toml"
    path.write_text('state_dir = "state"\n')
    config = load_config(path)
    with Database(db_path(config)) as db:
        emitter = Emitter(Topics(config.mqtt.topic_prefix))
        nodes = NodeBook(db, emitter, config)
        endpoints = Endpoints(
            Context(config, path, db, emitter, nodes, ImageBook(db, emitter, nodes)), None
        )
        routes = {p for p, _ in endpoints.routes()}
        endpoints.close()
    # The machine-readable routes; a page for people (HTML, its stream) needs no entry.
    api = {p for p in routes if p == "/metrics" or p.startswith("/api/")}
    # aiohttp's {name:regex} is OpenAPI's {name}
    api = {re.sub(r"\{(\w+):[^}]*\}", r"{\1}", p) for p in api}
    assert api == set(document["paths"])
    for path_item in document["paths"].values():
        responses = path_item["get"]["responses"]
        assert "200" in responses
        for status, response in responses.items():
            assert status == "200" or response["$ref"].startswith("#/components/responses/")


async def test_a_changed_or_deleted_node_is_never_served_from_the_last_answer(api: Api) -> None:
    first = (await api.get("/api/v1/nodes"))[1]
    again = (await api.get("/api/v1/nodes?label=demo"))[1]  # a filtered read between
    assert again == first[:3]
    moved = NODES[0].model_copy(update={"label": "other"})
    db = api.endpoints.ctx.db
    with db.transaction() as tx:
        tx.put_node(moved)
        tx.delete_node(NODES[2].mac)
    rows = (await api.get("/api/v1/nodes"))[1]
    assert rows == [record(n) for n in fleet([moved, *NODES[1:2], *NODES[3:]], {}, Filters())]
    assert _macs(rows) == ["02", "01", "04", "05"]


def _series(family_name: str, kind: str) -> set[str]:
    """The sample names a family of this type exposes (what a PromQL expression can name)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    return {family_name + s for s in suffixes.get(kind, ("",))}


async def test_the_shipped_grafana_dashboard_names_only_metrics_the_server_exposes(
    api: Api,
) -> None:
    status, text = await api.get("/metrics")
    assert status == 200
    exposed: set[str] = set()
    for family in text_string_to_metric_families(text):
        exposed |= _series(family.name, family.type)
    dashboard = json.loads((REPO / "config" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"]]
    named = {name for expr in exprs for name in re.findall(r"\bnetroot_[a-z_]+", expr)}
    assert named, "the dashboard queries no netroot metric"
    assert named <= exposed, sorted(named - exposed)
    # what Grafana's import asks for: a Prometheus data source, unique panel ids
    assert [i["pluginId"] for i in dashboard["__inputs"]] == ["prometheus"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
