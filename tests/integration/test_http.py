"""The daemon's HTTP server with a real broker: /metrics after nodes went stale, the label API
against `netroot versions --json`, the listen and token rules at start."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from integration.harness import Broker, Collector, Controller, agent_report, wait_for
from prometheus_client.parser import text_string_to_metric_families
from support import Workspace, free_port, make_root_tree

pytestmark = pytest.mark.integration

A = "52:54:00:00:03:0a"
B = "52:54:00:00:03:0b"
TOKEN = "t0ken-for-the-test"


class Served:
    """A served workspace whose daemon listens for HTTP on a free loopback port."""

    def __init__(self, tmp_path: Path, broker: Broker, http: str = "") -> None:
        self.port = free_port()
        extra = "debounce_quiet = 0.3\n" + broker.mqtt_config()
        http = f'listen = "127.0.0.1:{self.port}"\n{http}'
        self.ws = Workspace(tmp_path, keep_versions=3, extra_config=extra, http=http)
        make_root_tree(self.ws.tree)
        self.ws.write()
        self.collector = Collector(broker.port)
        self.controller = Controller(self.ws)

    def get(self, path: str, token: str | None = None, method: str = "GET") -> tuple[int, bytes]:
        """Status and body of one request (errors included)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, body
        return json.loads(body)

    def new_version(self, tag: str) -> str:
        """Edit the recipe and wait until the daemon built and activated it."""
        before = self.ws.active()
        (self.ws.tree / "etc" / "motd").write_text(f"{tag}\n")
        recipe = self.ws.root / "recipes" / "demo.toml"
        recipe.write_text(f'builder = "import"\nsource = "../source-tree"\n# {tag}\n')
        event = wait_for(
            lambda: [
                e
                for e in self.collector.events("image.activated")
                if e["data"]["previous"] == before
            ],
            f"activation after {tag}",
        )
        return str(event[0]["data"]["version"])

    def close(self) -> None:
        self.controller.cleanup()
        self.collector.close()


@pytest.fixture
def served(tmp_path: Path, broker: Broker) -> Iterator[Served]:
    lab = Served(tmp_path, broker)
    lab.ws.run("build", "demo", "--activate")
    lab.controller.start()
    yield lab
    lab.close()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, keyed by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_and_the_label_api_after_an_activation_made_nodes_stale(
    served: Served, broker: Broker
) -> None:
    v1 = served.ws.active()
    agent_report(broker, A, version=v1, ip="10.0.2.31")
    agent_report(broker, B, version=v1, ip="10.0.2.32")
    served.collector.wait_event("node.current", count=2)
    up = samples(served.get("/metrics")[1].decode())  # the event commits with the state
    assert up["netroot_nodes", frozenset({("label", "demo"), ("state", "up")})] == 2
    assert ("netroot_nodes_stale", frozenset({("label", "demo"), ("action", "reboot")})) not in up
    v2 = served.new_version("v2")
    served.collector.wait_event("node.stale", count=2, action="reboot", active_version=v2)

    status, body = served.get("/metrics")
    assert status == 200
    scraped = samples(body.decode())
    demo = frozenset({("label", "demo")})
    assert scraped["netroot_nodes", demo | {("state", "stale")}] == 2
    assert ("netroot_nodes", demo | {("state", "up")}) not in scraped
    assert scraped["netroot_nodes_stale", demo | {("action", "reboot")}] == 2
    assert scraped["netroot_node_last_seen_age_seconds_count", frozenset()] == 2
    assert scraped["netroot_node_last_seen_age_seconds_bucket", frozenset({("le", "+Inf")})] == 2
    assert scraped["netroot_broker_connected", frozenset()] == 1
    # `netroot build --activate` of v1, the daemon's build of v2: both recorded.
    assert scraped["netroot_builds_total", demo | {("result", "succeeded")}] == 2
    assert scraped["netroot_build_duration_seconds_count", demo] == 2
    assert scraped["netroot_activations_total", demo | {("action", "activate")}] == 2
    assert scraped["netroot_versions_kept", demo] == 2
    assert ("netroot_outbox_depth", frozenset()) in scraped

    (label,) = served.json("/api/v1/labels")
    assert label["label"] == "demo"
    assert label["active"] == v2 == served.ws.active()
    assert label["versions_kept"] == len(served.ws.versions()) == 2
    assert label["last_build"]["result"] == "succeeded"
    assert label["last_build"]["version"] == v2
    assert served.json("/api/v1/labels/demo/versions") == served.ws.json("versions", "demo")

    status, body = served.get("/api/v1/labels/nope/versions")
    assert (status, json.loads(body)["error"]) == (404, "no such label: 'nope'")
    assert served.get("/api/v1/labels", method="POST")[0] == 405
    assert served.get("/api/v1/nothing")[0] == 404
    document = served.json("/api/v1/openapi.json")
    assert document["openapi"].startswith("3.")
    assert {"/metrics", "/api/v1/labels", "/api/v1/nodes", "/api/v1/events"} <= set(
        document["paths"]
    )
    assert served.controller.alive()


def test_listen_rules_at_start_and_the_bearer_token(tmp_path: Path, broker: Broker) -> None:
    lab = Served(tmp_path, broker)
    try:
        lab.ws.run("build", "demo", "--activate")
        # Reachable from other machines without a token: refused before anything starts.
        lab.ws.http = f'listen = "0.0.0.0:{lab.port}"'
        lab.ws.write()
        refused = lab.ws.run("serve", check=False)
        assert refused.returncode != 0
        (line,) = refused.stderr.strip().splitlines()
        assert "http.listen" in line
        assert "http.token_file" in line

        token = tmp_path / "http.token"
        token.write_text(TOKEN + "\n")
        token.chmod(0o644)  # readable by every user: refused at start
        lab.ws.http = f'listen = "127.0.0.1:{lab.port}"\ntoken_file = "{token}"'
        lab.ws.write()
        refused = lab.ws.run("serve", check=False)
        assert refused.returncode != 0
        (line,) = refused.stderr.strip().splitlines()
        assert "http.token_file" in line
        assert "0644" in line

        token.chmod(0o600)
        lab.controller.start()
        for path in (
            "/metrics",
            "/api/v1/labels",
            "/api/v1/nodes",
            "/api/v1/events?since=1h",
            "/api/v1/nothing",
        ):
            assert lab.get(path)[0] == 401
            assert lab.get(path, token="wrong")[0] == 401
        assert lab.get("/metrics", token=TOKEN)[0] == 200
        status, body = lab.get("/api/v1/labels", token=TOKEN)
        assert status == 200
        assert json.loads(body)[0]["active"] == lab.ws.active()
        assert lab.get("/api/v1/nodes", token=TOKEN) == (200, b"[]")
        assert lab.controller.stop() == 0
    finally:
        lab.close()
