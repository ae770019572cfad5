"""The status page's server side: where a stream starts, the SSE framing, the node snapshot,
and the stream and page served over a real state database (no daemon)."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from controller.config.load import load_config
from controller.config.models import Config
from controller.daemon.db import Database, db_path
from controller.daemon.web.page import STATIC, StatusPage, page_node, read_snapshot
from controller.daemon.web.server import build_app
from controller.daemon.web.stream import StartError, sse_event, start_seq
from controller.events.node_events import NodeState

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
Client = TestClient[web.Request, web.Application]


def test_a_stream_starts_after_last_event_id_else_after_else_now() -> None:
    assert start_seq(None, None, head=42) == 42
    assert start_seq("", "", head=42) == 42
    assert start_seq(None, "7", head=42) == 7
    assert start_seq("9", "7", head=42) == 9  # a reconnect resumes where it was
    assert start_seq("0", None, head=42) == 0
    assert start_seq("100", None, head=42) == 42  # a journal that was reset


@pytest.mark.parametrize("bad", ["-1", "x", "1.5", " 3", "\u0661", "9" * 19])
def test_a_seq_that_is_not_a_number_is_named(bad: str) -> None:
    with pytest.raises(StartError, match="after"):
        start_seq(None, bad, head=1)
    with pytest.raises(StartError, match="Last-Event-ID"):
        start_seq(bad, None, head=1)


def test_an_event_is_its_seq_and_its_envelope_lines() -> None:
    assert sse_event(12, b'{"a": 1}') == b'id: 12\ndata: {"a": 1}\n\n'
    assert sse_event(3, b"one\ntwo") == b"id: 3\ndata: one\ndata: two\n\n"
    assert sse_event(4, b"") == b"id: 4\ndata: \n\n"


def _node(mac: str, state: str = "up", **fields: object) -> NodeState:
    return NodeState.model_validate({"mac": mac, "state": state, "label": "demo", **fields})


def test_a_page_node_is_what_a_row_shows() -> None:
    node = _node(
        "52:54:00:00:00:01",
        "stale",
        action="reboot",
        hostname="<b>n1</b>",
        version="20260101T000000.000Z-0123abcd",
        last_seen=AT,
        ip="10.0.0.1",
    )
    assert page_node(node) == {
        "mac": "52:54:00:00:00:01",
        "hostname": "<b>n1</b>",  # as is: the page sets it as text
        "label": "demo",
        "state": "stale",
        "version": "20260101T000000.000Z-0123abcd",
        "action": "reboot",
        "last_seen": "2026-01-02T03:04:05+00:00",
    }


def _config(tmp_path: Path) -> Config:
    path = tmp_path / "netroot.toml"
    path.write_text('state_dir = "state"\n[labels.demo]\nrecipe = "demo.toml"\n')
    return load_config(path)


def _journal(config: Config, *types: str) -> None:
    with Database(db_path(config)) as db, db.transaction() as tx:
        for kind in types:
            envelope = json.dumps({"type": f"org.netroot.{kind}", "data": {}}).encode()
            tx.emit_event(
                "netroot/events/x", envelope, at=AT, event_type=f"org.netroot.{kind}",
                subject=None, label="demo",
            )  # fmt: skip


def test_the_snapshot_reads_the_journal_head_and_every_node(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _journal(config, "node.booted", "node.current")
    with Database(db_path(config)) as db, db.transaction() as tx:
        tx.put_node(_node("52:54:00:00:00:02"))
        tx.put_node(_node("52:54:00:00:00:01", "lost"))
    snap = read_snapshot(config)
    assert snap["seq"] == 2
    assert [(n["mac"], n["state"]) for n in snap["nodes"]] == [
        ("52:54:00:00:00:01", "lost"),
        ("52:54:00:00:00:02", "up"),
    ]


async def _serve(config: Config) -> tuple[StatusPage, Client]:
    page = StatusPage(lambda: config, ThreadPoolExecutor(1))
    page.stream.poll_s = 0.05
    client: Client = TestClient(TestServer(build_app(page.routes(), None)))
    await client.start_server()
    return page, client


async def _read_events(response: ClientResponse, count: int) -> list[tuple[int, str]]:
    content = response.content
    events: list[tuple[int, str]] = []
    seq = 0
    while len(events) < count:
        line = (await content.readline()).decode()
        assert line, "the stream ended"
        if line.startswith("id: "):
            seq = int(line[4:])
        elif line.startswith("data: "):
            events.append((seq, json.loads(line[6:])["type"].removeprefix("org.netroot.")))
    return events


async def test_the_stream_follows_the_journal_resumes_and_ends_on_close(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _journal(config, "image.activated", "node.stale")
    page, client = await _serve(config)
    try:
        response = await client.get("/api/v1/stream?after=0")
        assert response.headers["Content-Type"] == "text/event-stream"
        assert await _read_events(response, 2) == [(1, "image.activated"), (2, "node.stale")]
        _journal(config, "node.current")  # written while the stream waits
        assert await _read_events(response, 1) == [(3, "node.current")]

        resumed = await client.get("/api/v1/stream?after=0", headers={"Last-Event-ID": "2"})
        assert await _read_events(resumed, 1) == [(3, "node.current")]
        fresh = await client.get("/api/v1/stream")  # from now on
        _journal(config, "node.lost")
        assert await _read_events(fresh, 1) == [(4, "node.lost")]

        bad = await client.get("/api/v1/stream?after=-1")
        assert bad.status == 400
        assert "after" in (await bad.json())["error"]

        page.close()  # three streams open: each ends by itself
        async with asyncio.timeout(10):
            for stream in (response, resumed, fresh):
                rest = await stream.content.read()  # to the end: the server closed it
                assert rest == b"" or rest.endswith(b"\n")  # whole lines only
        assert page.stream.open == 0
        assert (await client.get("/api/v1/stream")).status == 503
    finally:
        page.close()
        await client.close()


async def test_the_page_and_its_files_carry_a_content_security_policy(tmp_path: Path) -> None:
    config = _config(tmp_path)
    Database(db_path(config)).close()
    page, client = await _serve(config)
    try:
        for path, kind in (
            ("/", "text/html"),
            ("/static/status.js", "text/javascript"),
            ("/static/status.css", "text/css"),
        ):
            response = await client.get(path)
            assert response.status == 200
            assert response.content_type == kind
            assert response.headers["Content-Security-Policy"].startswith("default-src 'self';")
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        snapshot = await client.get("/status/nodes")
        assert await snapshot.json() == {"seq": 0, "nodes": []}
    finally:
        page.close()
        await client.close()


def test_the_shipped_files_load_nothing_from_elsewhere_and_never_parse_data_as_markup() -> None:
    page = StatusPage(lambda: load_config(None), ThreadPoolExecutor(1))
    page.close()
    assert set(page.files) == set(STATIC)
    for name, body in page.files.items():
        text = body.decode()
        assert "http://" not in text, name
        assert "https://" not in text, name
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, (name, sink)
