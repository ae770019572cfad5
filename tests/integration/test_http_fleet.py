"""Issue 10's acceptance for the fleet API, with a real daemon and broker: agents (a paho
client publishing the agent's plain JSON reports) boot, an activation makes some stale, one
reboots into the new version; then /metrics, /api/v1/nodes against `netroot nodes --json`,
and /api/v1/events against what the broker delivered."""

from __future__ import annotations

import json
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from integration.harness import Broker, report
from integration.test_http import Served, samples
from paho.mqtt.enums import CallbackAPIVersion

pytestmark = pytest.mark.integration

STAY = ["52:54:00:00:04:01", "52:54:00:00:04:02"]  # keep running v1: stale after v2
REBOOTS = "52:54:00:00:04:03"  # reboots into v2: up again


class Agents:
    """Node agents as the broker sees them: reports on netroot/node/MAC/report, QoS 1."""

    def __init__(self, broker: Broker) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-agents")
        self.client.connect("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()

    def boot(self, mac: str, version: str, ip: str) -> None:
        """A boot report (a new boot id), as the agent's report_json writes it."""
        body = report(mac, "boot", version=version, ip=ip, boot_id=str(uuid.uuid4()))
        sent = self.client.publish(f"netroot/node/{mac}/report", json.dumps(body), qos=1)
        sent.wait_for_publish(timeout=20)
        assert sent.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def served(tmp_path: Path, broker: Broker) -> Iterator[Served]:
    lab = Served(tmp_path, broker)
    lab.ws.run("build", "demo", "--activate")
    lab.controller.start()
    yield lab
    lab.close()


def _published_events(served: Served, since: datetime) -> list[dict[str, Any]]:
    """The envelopes the broker delivered on the events topics, from `since` on."""
    out, seen = [], set()
    for message in served.collector.all():
        if not message.topic.startswith("netroot/events/"):
            continue
        envelope = message.json()
        if envelope["id"] in seen or datetime.fromisoformat(envelope["time"]) < since:
            continue
        seen.add(envelope["id"])
        out.append(envelope)
    return out


def _scenario(served: Served, broker: Broker) -> tuple[str, str]:
    """Three boots on v1, v2 activated (all stale), one reboot into v2; returns v1, v2."""
    v1 = served.ws.active()
    assert v1 is not None
    agents = Agents(broker)
    try:
        for i, mac in enumerate([*STAY, REBOOTS]):
            agents.boot(mac, v1, f"10.0.2.{40 + i}")
        served.collector.wait_event("node.current", count=3)
        v2 = served.new_version("v2")
        served.collector.wait_event("node.stale", count=3, active_version=v2)
        agents.boot(REBOOTS, v2, "10.0.2.42")
        served.collector.wait_event("node.current", count=1, mac=REBOOTS, version=v2)
    finally:
        agents.close()
    return v1, v2


def test_metrics_nodes_and_events_after_agents_reported_and_an_activation(
    served: Served, broker: Broker
) -> None:
    start = datetime.now(UTC)
    v1, v2 = _scenario(served, broker)

    status, body = served.get("/metrics")
    assert status == 200
    scraped = samples(body.decode())
    demo = frozenset({("label", "demo")})
    assert scraped["netroot_nodes", demo | {("state", "stale")}] == 2
    assert scraped["netroot_nodes", demo | {("state", "up")}] == 1
    assert scraped["netroot_nodes_stale", demo | {("action", "reboot")}] == 2
    assert scraped["netroot_node_reports_total", frozenset()] == 4  # 3 boots and a reboot
    assert scraped["netroot_node_last_seen_age_seconds_count", frozenset()] == 3

    # The API and the CLI: the same objects, in the same order, filters alike.
    cli = served.ws.json("nodes")
    assert served.json("/api/v1/nodes") == cli
    assert [n["mac"] for n in cli] == [*STAY, REBOOTS]  # problems first
    assert served.json("/api/v1/nodes?stale=1") == served.ws.json("nodes", "--stale")
    assert served.json("/api/v1/nodes?state=up&label=demo") == [cli[2]]
    assert served.json(f"/api/v1/nodes/{STAY[0].upper()}") == cli[0]
    assert cli[0]["state"] == "stale"
    assert (cli[0]["version"], cli[0]["active_version"]) == (v1, v2)
    status, body = served.get("/api/v1/nodes/52:54:00:00:04:99")
    assert (status, json.loads(body)) == (404, {"error": "no such node: 52:54:00:00:04:99"})
    status, body = served.get("/api/v1/nodes/not-a-mac")
    assert status == 400
    assert json.loads(body)["error"].startswith("mac: 'not-a-mac' is not a MAC address")

    # The journal: what the broker delivered since the start, in the same order.
    since = urllib.parse.quote(start.isoformat())
    events = served.json(f"/api/v1/events?since={since}")
    assert [e["id"] for e in events] == [e["id"] for e in _published_events(served, start)]
    kinds = [e["type"].removeprefix("org.netroot.") for e in events]
    activated = kinds.index("image.activated")
    assert kinds[:activated].count("node.booted") == 3
    assert kinds[:activated].count("node.current") == 3
    assert kinds[activated:].count("node.stale") == 3
    assert kinds[-2:] == ["node.booted", "node.current"]  # the reboot into v2
    stale = served.json(f"/api/v1/events?since={since}&type=node.stale")
    assert {e["data"]["mac"] for e in stale} == {*STAY, REBOOTS}
    status, body = served.get("/api/v1/events?since=yesterday")
    assert status == 400
    (line,) = json.loads(body)["error"].splitlines()
    assert line.startswith("since: 'yesterday' is not a time")
    assert served.controller.alive()
