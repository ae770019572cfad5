"""The status page in a real browser (headless Debian chromium) against a running daemon.

A node reported by a simulated agent shows `up`, then `stale` after an
activation, with the page never reloaded; 10,000 nodes render as group counts
and a bounded number of rows (the screenshot is kept in artifacts/).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from integration.browser import Chromium
from integration.harness import Broker, agent_report, wait_for
from integration.test_http import Served
from support import REPO

from controller.daemon.db import Database
from controller.events.node_events import NodeState

pytestmark = pytest.mark.integration

A = "52:54:00:00:0a:01"
ARTIFACT = REPO / "artifacts" / "status-10k.png"
HOSTILE = '<img src=x onerror="document.title=1">'  # a hostname is whatever DHCP was told


@pytest.fixture
def browser() -> Iterator[Chromium]:
    with Chromium() as chromium:
        yield chromium


def js(value: str) -> str:
    """A JavaScript string literal."""
    return json.dumps(value)


def row_cell(browser: Chromium, mac: str, cell: str) -> Any:
    return browser.evaluate(
        f"document.querySelector('tr[data-mac={js(mac)}] .{cell}')?.textContent ?? null"
    )


def type_filter(browser: Chromium, text: str) -> None:
    """Type into the page's MAC/hostname filter as a person would (an input event)."""
    browser.evaluate(
        f"(() => {{ const i = document.getElementById('text'); i.value = {js(text)};"
        " i.dispatchEvent(new Event('input', {bubbles: true})); })()"
    )


def stream_events(port: int, last_event_id: int, until: str) -> list[tuple[int, dict[str, Any]]]:
    """Read /api/v1/stream from Last-Event-ID until an event of type `until` arrived."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/stream", headers={"Last-Event-ID": str(last_event_id)}
    )
    events: list[tuple[int, dict[str, Any]]] = []
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        assert response.headers["Content-Type"] == "text/event-stream"
        seq = None
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("id: "):
                seq = int(line[4:])
            elif line.startswith("data: "):
                assert seq is not None
                events.append((seq, json.loads(line[6:])))
                if events[-1][1]["type"] == f"org.netroot.{until}":
                    return events
    raise AssertionError(f"the stream ended before {until}")


def test_a_node_goes_from_up_to_stale_on_the_page_without_a_reload(
    tmp_path: Path, broker: Broker, browser: Chromium
) -> None:
    served = Served(tmp_path, broker)
    try:
        served.ws.run("build", "demo", "--activate")
        served.controller.start()
        v1 = served.ws.active()
        agent_report(broker, A, version=v1, ip="10.0.2.41")
        served.collector.wait_event("node.current", mac=A)

        status, _ = served.get("/")
        assert status == 200
        head = urllib.request.urlopen(f"http://127.0.0.1:{served.port}/", timeout=30)
        with head:
            assert head.headers["Content-Security-Policy"].startswith("default-src 'self'")

        browser.navigate(f"http://127.0.0.1:{served.port}/")
        browser.evaluate("window.testMarker = 'first load'")
        type_filter(browser, A)
        wait_for(lambda: row_cell(browser, A, "state") == "up", "the node up on the page")
        assert row_cell(browser, A, "version") == v1
        label_active = (
            "document.querySelector('#labels tr[data-label=\"demo\"] .active').textContent"
        )
        assert browser.evaluate(label_active) == v1

        v2 = served.new_version("v2")
        served.collector.wait_event("node.stale", mac=A, active_version=v2)
        wait_for(lambda: row_cell(browser, A, "state") == "stale", "the node stale on the page")
        assert row_cell(browser, A, "action") == "reboot"
        assert row_cell(browser, A, "version") == v1
        wait_for(lambda: browser.evaluate(label_active) == v2, "the new version in the labels")
        # Never reloaded: the marker survived, the script ran once, one navigation.
        assert browser.evaluate("window.testMarker") == "first load"
        assert browser.evaluate("window.netrootLoads") == 1
        assert browser.evaluate("performance.getEntriesByType('navigation').length") == 1

        # The same stream for any client, resumed from a seq: ids increase, in journal order.
        events = stream_events(served.port, 0, until="node.stale")
        seqs = [seq for seq, _ in events]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)
        kinds = [env["type"].removeprefix("org.netroot.") for _, env in events]
        assert "node.current" in kinds
        assert "image.activated" in kinds
        resumed = stream_events(served.port, seqs[0], until="node.stale")
        assert [seq for seq, _ in resumed] == seqs[1:]
        status, body = served.get("/api/v1/stream?after=x")
        assert status == 400
        assert "after" in json.loads(body)["error"]

        # The browser's stream is still open: stopping must not wait for it.
        assert served.controller.stop() == 0
    finally:
        served.close()


def summary(state: str) -> str:
    """The CSS selector of a state group's summary line."""
    return f"details.state-group[data-state={state}] summary"


def _fleet(count: int, version: str, old: str) -> list[NodeState]:
    now = datetime.now(UTC)
    nodes = []
    for i in range(count):
        mac = f"52:54:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
        fields: dict[str, Any] = {
            "mac": mac,
            "label": "demo",
            "hostname": HOSTILE if i == 7 else f"node{i:05d}",
            "version": version,
            "state": "up",
            "last_seen": now - timedelta(seconds=i % 50),
            "booted_at": now - timedelta(hours=2),
        }
        if i % 100 == 1:
            fields.update(state="stale", action="reboot", version=old, active_version=version)
        elif i % 250 == 2:
            fields.update(state="lost", last_seen=now - timedelta(hours=3))
        nodes.append(NodeState.model_validate(fields))
    return nodes


def test_ten_thousand_nodes_render_as_counts_and_bounded_rows(
    tmp_path: Path, broker: Broker, browser: Chromium
) -> None:
    served = Served(tmp_path, broker)
    try:
        served.ws.run("build", "demo", "--activate")
        v1 = served.ws.active()
        assert v1 is not None
        old = "20250101T000000.000Z-0badc0de"
        fleet = _fleet(10_000, v1, old)
        with Database(served.ws.state / "netroot.db") as db, db.transaction() as tx:
            for node in fleet:
                tx.put_node(node)
        served.controller.start()

        browser.navigate(f"http://127.0.0.1:{served.port}/")
        browser.evaluate("window.testMarker = 'first load'")
        wait_for(lambda: browser.evaluate("document.body.dataset.nodes") == "10000", "10,000 nodes")
        counts = browser.evaluate(
            "Object.fromEntries([...document.querySelectorAll('details.state-group')]"
            ".map(d => [d.dataset.state, Number(d.dataset.count)]))"
        )
        expected = {"up": 0, "stale": 0, "lost": 0}
        for node in fleet:
            expected[node.state] += 1
        assert counts == expected
        assert sum(counts.values()) == 10_000
        assert browser.evaluate("document.querySelector('details.label-group').dataset.count") == (
            "10000"
        )
        assert browser.evaluate("document.getElementById('total').textContent").startswith(
            "10000 nodes: "
        )
        rows = browser.evaluate("document.querySelectorAll('tr[data-mac]').length")
        assert 0 < rows <= 2 * 200  # the open problem groups, each at most 200 rows
        more = browser.evaluate("[...document.querySelectorAll('.more')].map(e => e.textContent)")
        assert more == []  # lost and stale fit; up is collapsed to its count

        # Opening `up` renders 200 of its rows and says how many more there are; the
        # problem groups fold to one line each (what the screenshot shows).
        for state in ("up", "lost", "stale"):
            browser.evaluate(f"document.querySelector({js(summary(state))}).click()")
        wait_for(
            lambda: browser.evaluate("document.querySelectorAll('.more').length") == 1,
            "the up group open",
        )
        assert browser.evaluate("document.querySelector('.more').textContent") == (
            f"{expected['up'] - 200} more \u2014 refine the filter"
        )
        assert browser.evaluate("document.querySelectorAll('tr[data-mac]').length") == 200

        # A hostile hostname is text, never markup.
        type_filter(browser, "52:54:00:00:00:07")
        wait_for(lambda: row_cell(browser, "52:54:00:00:00:07", "hostname") == HOSTILE, "node 7")
        assert browser.evaluate("document.querySelectorAll('#nodes img').length") == 0
        assert browser.evaluate("document.title") == "netroot fleet"
        type_filter(browser, "")
        wait_for(
            lambda: browser.evaluate("document.body.dataset.shown") == "10000", "the filter cleared"
        )
        browser.evaluate("window.scrollTo(0, 0)")
        png = browser.screenshot(tmp_path / "status-10k.png", ARTIFACT)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert browser.evaluate("window.testMarker") == "first load"
        assert served.controller.alive()
    finally:
        served.close()
