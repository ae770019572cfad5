"""Node tracking through a real broker: agents made of mosquitto_pub, the DHCP hook,
stale lists, wills, the gc guard, and input the daemon must refuse without stopping."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from integration.harness import (
    BOOT_ID_2,
    Broker,
    Collector,
    Controller,
    agent_report,
    agent_session,
    publish,
    report,
    wait_for,
)
from support import Workspace, make_root_tree

from controller.config.load import load_config
from controller.store import liveedits
from controller.store.layout import label_paths

pytestmark = pytest.mark.integration

A = "52:54:00:00:02:0a"
B = "52:54:00:00:02:0b"
SOME_VERSION = "20250101T000000.000Z-00000000"


class Nodes:
    """A served workspace with keep_versions = 1, so the gc guard is what keeps v1."""

    def __init__(self, tmp_path: Path, broker: Broker) -> None:
        extra = "debounce_quiet = 0.3\n" + broker.mqtt_config()
        self.ws = Workspace(tmp_path, keep_versions=1, extra_config=extra)
        make_root_tree(self.ws.tree)
        self.ws.write()
        self.broker = broker
        self.collector = Collector(broker.port)
        self.controller = Controller(self.ws)

    def new_version(self, tag: str) -> str:
        """Edit the recipe and wait until the daemon built and activated it."""
        before = self.ws.active()
        recipe = self.ws.root / "recipes" / "demo.toml"
        # The tree changes too: a build identical to the active version makes none.
        (self.ws.tree / "etc" / "motd").write_text(f"{tag}\n")
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

    def node(self, mac: str) -> dict[str, Any]:
        return next(n for n in self.ws.json("nodes") if n["mac"] == mac)

    def stale(self) -> dict[str, str]:
        return {n["mac"]: n["action"] for n in self.ws.json("nodes", "--stale")}


@pytest.fixture
def nodes(tmp_path: Path, broker: Broker) -> Iterator[Nodes]:
    lab = Nodes(tmp_path, broker)
    lab.ws.run("build", "demo", "--activate")
    lab.controller.start()
    yield lab
    lab.controller.cleanup()
    lab.collector.close()


def retained_state(broker: Broker, mac: str) -> Any:
    """What a subscriber arriving now gets on the node's state topic."""
    done = subprocess.run(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(broker.port),
            "-C",
            "1",
            "-W",
            "20",
            "-t",
            f"netroot/state/node/{mac}",
        ],
        capture_output=True,
        check=True,
        timeout=30,
    )
    return json.loads(done.stdout)


def node_events(lab: Nodes, mac: str) -> list[str]:
    return [
        e["type"].removeprefix("org.netroot.node.")
        for e in lab.collector.events(topic=f"netroot/events/node/{mac}")
    ]


def test_stale_after_activation_current_after_reboot_lost_by_will_and_the_gc_guard(
    nodes: Nodes, tmp_path: Path
) -> None:
    v1 = nodes.ws.active()
    assert v1 is not None
    nodes.ws.run("hook", "dhcp", "add", A.upper(), "10.0.2.21", "node-a", "--firmware")
    nodes.collector.wait_event("node.dhcp", mac=A, state="dhcp")
    with agent_session(nodes.broker, B, tmp_path / "agent-b.out") as agent_b:
        agent_report(nodes.broker, A, version=v1, ip="10.0.2.21")
        agent_report(nodes.broker, B, version=v1, ip="10.0.2.22")
        nodes.collector.wait_event("node.current", count=2)
        assert nodes.stale() == {}

        v2 = nodes.new_version("v2")
        nodes.collector.wait_event("node.stale", count=2, action="reboot", active_version=v2)
        assert nodes.stale() == {A: "reboot", B: "reboot"}
        assert nodes.node(A)["reason"] == f"runs {v1}, active is {v2}"
        assert node_events(nodes, A) == ["dhcp", "booted", "current", "stale"]
        assert retained_state(nodes.broker, A)["data"]["state"] == "stale"

        agent_report(nodes.broker, A, version=v2, boot_id=BOOT_ID_2)  # A rebooted into v2
        nodes.collector.wait_event("node.current", mac=A, version=v2)
        assert nodes.stale() == {B: "reboot"}

        v3 = nodes.new_version("v3")
        wait_for(lambda: nodes.stale() == {A: "reboot", B: "reboot"}, "both stale on v3")
        gc = nodes.ws.json("gc", "demo")
        assert gc["pruned"] == []
        assert gc["kept"] == {v1: "in use by a live node", v2: "rollback target"}
        assert v1 in nodes.ws.versions()

        agent_b.send_signal(signal.SIGKILL)  # B's agent dies: the broker sends its will
        nodes.collector.wait_event("node.lost", mac=B)
        assert nodes.node(B)["state"] == "lost"
        assert nodes.stale() == {A: "reboot"}

    gc = nodes.ws.json("gc", "demo")
    assert gc["pruned"] == [v1]
    (pruned,) = nodes.collector.wait_event("image.pruned")
    assert pruned["data"]["versions"] == [v1]
    assert nodes.ws.active() == v3
    assert nodes.controller.alive()


def test_auto_reboot_sends_the_command_to_that_node_only(tmp_path: Path, broker: Broker) -> None:
    lab = Nodes(tmp_path, broker)
    lab.ws.config.write_text(lab.ws.config.read_text() + "auto_reboot = true\n")
    lab.ws.run("build", "demo", "--activate")
    lab.controller.start()
    try:
        v1 = lab.ws.active()
        with (
            agent_session(broker, A, tmp_path / "a.out"),
            agent_session(broker, B, tmp_path / "b.out"),
        ):
            agent_report(broker, A, version=v1)
            lab.collector.wait_event("node.current", mac=A)
            v2 = lab.new_version("v2")
            (stale,) = lab.collector.wait_event("node.stale", mac=A)
            assert stale["data"]["commanded"] is True
            wait_for((tmp_path / "a.out").read_text, "the reboot command at A")
        command = json.loads((tmp_path / "a.out").read_text().splitlines()[0])
        assert (command["command"], command["version"]) == ("reboot", v2)
        assert (tmp_path / "b.out").read_text() == ""  # B is not running: nothing to do
    finally:
        lab.controller.cleanup()
        lab.collector.close()


BAD_MESSAGES = [
    (f"netroot/node/{A}/report", b"\x00\x01 not json at all", "invalid JSON"),
    (f"netroot/node/{A}/report", b'{"kind": "boot", "mac": "' + b"x" * 9000 + b'"}', "exceeds"),
    (f"netroot/node/{A}/report", json.dumps({"kind": "reboot-all", "mac": A}).encode(), "kind"),
    (f"netroot/node/{A}/report", json.dumps(report(A, version="../../etc")).encode(), "version"),
    (
        f"netroot/node/{A}/report",
        json.dumps(report(B, version=SOME_VERSION)).encode(),
        "does not match",
    ),
    (
        "netroot/node/ff:ff:ff:ff:ff:ff/report",
        json.dumps(report(A, version=SOME_VERSION)).encode(),
        "multicast",
    ),
]


def test_bad_messages_and_a_bad_config_are_refused_and_the_daemon_keeps_going(
    nodes: Nodes,
) -> None:
    v1 = nodes.ws.active()
    agent_report(nodes.broker, B, version=v1)
    nodes.collector.wait_event("node.current", mac=B)
    before_b = nodes.node(B)
    # Far too large to be a report: the broker drops it for the controller
    # (its MQTT 5 maximum packet size), which never reads it.
    huge = b'{"kind": "boot", "mac": "' + b"x" * (1 << 20) + b'"}'
    publish(nodes.broker, f"netroot/node/{A}/report", huge)
    for topic, payload, _ in BAD_MESSAGES:
        publish(nodes.broker, topic, payload)
    nodes.controller.wait_log("rejected node message", count=len(BAD_MESSAGES))
    log = nodes.controller.log_text()
    assert f"payload of {len(huge)} bytes" not in log
    for _, _, reason in BAD_MESSAGES:
        assert reason in log
    assert nodes.node(B) == before_b  # A's message naming B changed nothing
    assert A not in {n["mac"] for n in nodes.ws.json("nodes")}

    good_config = nodes.ws.config.read_text()
    nodes.ws.config.write_text(good_config.replace("keep_versions = 1", "keep_versions = -4"))
    nodes.controller.signal(signal.SIGHUP)
    (rejected,) = nodes.collector.wait_event("controller.config_rejected", count=1)[:1]
    assert "keep_versions" in rejected["data"]["error"]
    nodes.controller.wait_log("config rejected; keeping the running one")
    assert nodes.controller.alive()

    nodes.ws.config.write_text(good_config)
    nodes.controller.signal(signal.SIGHUP)
    nodes.collector.wait_event("controller.config_reloaded")

    # Still serving: a report is applied, an edit is built and activated.
    agent_report(nodes.broker, A, version=v1)
    nodes.collector.wait_event("node.current", mac=A)
    nodes.new_version("after the bad input")
    assert nodes.controller.alive()
    assert nodes.ws.json("status")["daemon"]["running"]


def test_a_live_edit_asks_the_nodes_running_that_version_to_remount(
    nodes: Nodes, tmp_path: Path
) -> None:
    v1 = nodes.ws.active()
    assert v1 is not None
    with agent_session(nodes.broker, A, tmp_path / "a.out"):
        agent_report(nodes.broker, A, version=v1)
        nodes.collector.wait_event("node.current", mac=A)
        # What `netroot shell --live` records after changing the served tree in place.
        paths = label_paths(load_config(nodes.ws.config), "demo")
        edit = liveedits.LiveEdit(time=datetime.now(UTC), changed=1, paths=("etc/motd",))
        liveedits.record(paths, v1, edit)

        (stale,) = nodes.collector.wait_event("node.stale", mac=A, action="remount")
        assert stale["data"]["commanded"] is True  # auto_remount is the default
        nodes.collector.wait_event("node.remount_requested", mac=A)
        wait_for((tmp_path / "a.out").read_text, "the remount command at A")
        command = json.loads((tmp_path / "a.out").read_text().splitlines()[0])
        assert command["command"] == "remount"
        assert nodes.stale() == {A: "remount"}

        agent_report(nodes.broker, A, "remount_result", version=v1, ok=True)
        nodes.collector.wait_event("node.remounted", mac=A)
        wait_for(lambda: nodes.stale() == {}, "A current again")


def test_an_activation_and_a_rollback_by_hand_reach_the_running_nodes(nodes: Nodes) -> None:
    """`netroot activate` and `rollback` run beside the daemon (not its own build): it hears
    of them from the store's history and judges the running nodes again."""
    v1 = nodes.ws.active()
    agent_report(nodes.broker, A, version=v1)
    nodes.collector.wait_event("node.current", mac=A)
    nodes.ws.run("build", "demo", "--force")  # a new version, not activated
    v2 = nodes.ws.versions()[-1]
    assert v2 != v1 and nodes.ws.active() == v1

    nodes.ws.run("activate", "demo", v2)
    nodes.collector.wait_event("image.activated", version=v2)
    nodes.collector.wait_event("node.stale", mac=A, active_version=v2)
    assert nodes.stale() == {A: "reboot"}

    nodes.ws.run("rollback", "demo")
    nodes.collector.wait_event("image.rolled_back", version=v1)
    wait_for(lambda: nodes.stale() == {}, "A no longer stale after the rollback")
    assert nodes.controller.alive()
