"""`netroot events --since` reads the event journal: with a real daemon and broker, every
event the broker delivered is there, in the same order, and still there with the daemon stopped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from integration.harness import Broker, Collector, Controller, agent_report, wait_for
from support import Workspace, make_root_tree

pytestmark = pytest.mark.integration

QUICK = "debounce_quiet = 0.5\ndebounce_max_latency = 10\n"
MAC_A = "52:54:00:00:02:0a"
MAC_B = "52:54:00:00:02:0b"


@pytest.fixture
def ws(tmp_path: Path, broker: Broker) -> Iterator[Workspace]:
    workspace = Workspace(tmp_path, extra_config=QUICK + broker.mqtt_config())
    make_root_tree(workspace.tree)
    yield workspace.write()


def delivered(collector: Collector) -> list[dict[str, Any]]:
    """The events (not states) the subscriber got, first delivery of each, in order."""
    seen: set[str] = set()
    out = []
    for m in collector.all():
        if not m.topic.startswith("netroot/events/"):
            continue
        env = m.json()
        if env["id"] not in seen:
            seen.add(env["id"])
            out.append(env)
    return out


def journal(ws: Workspace, *args: str) -> list[dict[str, Any]]:
    out = ws.run("--json", "events", *args).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_the_journal_answers_what_happened_with_the_daemon_stopped(
    ws: Workspace, broker: Broker
) -> None:
    ws.run("build", "demo", "--activate")  # v1 by the CLI, no daemon yet: journalled too
    v1 = ws.active()
    collector = Collector(broker.port)
    controller = Controller(ws)
    try:
        controller.start()
        for mac in (MAC_A, MAC_B):
            agent_report(broker, mac, version=v1)
        collector.wait_event("node.current", count=2)
        (ws.tree / "etc" / "motd").write_text("a change\n")
        ws.root.joinpath("recipes", "demo.toml").write_text(
            'builder = "import"\nsource = "../source-tree"\n# edited\n'
        )
        (activated,) = collector.wait_event("image.activated", count=2)[1:]
        collector.wait_event("node.stale", count=2, active_version=activated["data"]["version"])
        wait_for(lambda: ws.json("status")["outbox"]["pending"] == 0, "the outbox to drain")
        assert controller.stop() == 0
    finally:
        controller.cleanup()
        collector.close()

    seen = delivered(collector)
    types = [e["type"].removeprefix("org.netroot.") for e in seen]
    assert types[:3] == ["image.build.started", "image.build.succeeded", "image.activated"]
    assert {"node.booted", "node.current", "node.stale"} <= set(types)

    # The daemon is stopped: the journal holds what the broker delivered, same order, same JSON.
    assert not ws.json("status")["daemon"]["running"]
    assert journal(ws, "--since", "1h") == seen

    nodes = journal(ws, "--since", "1h", "--type", "node.")
    assert [e["id"] for e in nodes] == [
        e["id"] for e in seen if e["type"].startswith("org.netroot.node.")
    ]
    failed = journal(ws, "--since", "1h", "--type", "image.build.failed")
    assert failed == []
    demo = journal(ws, "--since", "1d", "--label", "demo")
    assert len(demo) == len(seen)  # every event here is of label demo
    assert journal(ws, "--since", "2999-01-01T00:00") == []

    table = ws.run("events", "--since", "10m").stdout.splitlines()
    assert table[0].split() == ["TIME", "(UTC)", "TYPE", "SUBJECT", "LABEL", "SUMMARY"]
    assert len(table) == 1 + len(seen)
    assert table[1].split()[2:4] == ["image.build.started", "demo"]
    assert any(MAC_A in line and "node.stale" in line for line in table)

    bad = ws.run("events", "--since", "yesterday", check=False)
    assert bad.returncode != 0
    assert bad.stderr.strip().count("\n") == 0
    assert "--since: 'yesterday' is not a time (allowed: an ISO 8601 time" in bad.stderr
    mixed = ws.run("events", "--since", "1h", "--count", "1", check=False)
    assert "are for the live stream only" in mixed.stderr
    alone = ws.run("events", "--type", "node.", check=False)
    assert "--type and --label select from the journal: give --since TIME too" in alone.stderr


def test_the_daemon_prunes_the_journal_at_start_and_the_outbox_still_delivers(
    tmp_path: Path, broker: Broker
) -> None:
    ws = Workspace(
        tmp_path, extra_config=QUICK + "events_retention = 1\n" + broker.mqtt_config()
    ).write()
    make_root_tree(ws.tree)
    ws.run("build", "demo", "--activate")
    journalled = journal(ws, "--since", "1h")
    assert [e["type"] for e in journalled][-1] == "org.netroot.image.activated"
    written = max(datetime.fromisoformat(e["time"]) for e in journalled)
    wait_for(lambda: datetime.now(UTC) - written > timedelta(seconds=1.5), "the events to age")
    collector = Collector(broker.port)
    controller = Controller(ws)
    try:
        controller.start()
        controller.wait_log("journal pruned")
        collector.wait_event("image.activated")  # the outbox is not the journal
        assert controller.stop() == 0
    finally:
        controller.cleanup()
        collector.close()
    assert journal(ws, "--since", "1h") == []
    assert ws.run("events", "--since", "1h").stdout.startswith("no events since ")
