"""Issue 12's canary acceptance with a real daemon and mosquitto: 20 simulated agents
(paho clients speaking the agent's plain JSON) that obey `reboot` by booting what their
per-MAC menu (else the default menu) in the TFTP root names, and answer `health`.

3 canaries of 20 pass: the label activates and the other 17 go stale; then a canary
fails its check: every canary goes back to the active version, none stays on the
failed one, and a paho subscriber got the steps in order; a restart mid-rollout fails
it clearly and reverts the canaries too.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from integration.harness import Broker, Collector, Controller, report, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from support import Workspace, free_port, make_root_tree

from controller.render import pxelinux_mac_path

pytestmark = pytest.mark.integration

MACS = [f"52:54:00:00:0c:{i:02x}" for i in range(20)]
VERSION_ARG = re.compile(r"netroot\.version=(\S+)")


class Node:
    """One simulated node: its own MQTT session, subscribed to its cmd topic."""

    def __init__(self, fleet: Fleet, mac: str) -> None:
        self.fleet, self.mac = fleet, mac
        self.version = ""
        self.boot_id = ""
        self.commands: list[dict[str, Any]] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"node-{mac}")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", fleet.broker.port, keepalive=30)
        self.client.subscribe(f"netroot/node/{mac}/cmd", qos=1)
        self.client.loop_start()
        assert subscribed.wait(20)

    def boot(self) -> None:
        """PXE: the per-MAC menu if there is one, else the default; then the boot report."""
        self.version = self.fleet.menu_version(self.mac)
        self.boot_id = str(uuid.uuid4())
        self.send(report(self.mac, "boot", version=self.version, boot_id=self.boot_id))

    def send(self, body: dict[str, Any]) -> None:
        sent = self.client.publish(f"netroot/node/{self.mac}/report", json.dumps(body), qos=1)
        sent.wait_for_publish(timeout=20)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        command = json.loads(msg.payload)
        self.commands.append(command)
        # Work off the network thread: a boot reads files and publishes.
        threading.Thread(target=self._obey, args=(command,), daemon=True).start()

    def _obey(self, command: dict[str, Any]) -> None:
        if command.get("boot_id") not in (None, self.boot_id):
            return  # meant for another boot, as the agent ignores it
        if command["command"] == "reboot":
            self.boot()
        elif command["command"] == "health":
            self.fleet.health_gate.wait(60)
            code, output = self.fleet.health.get(self.mac, (0, "running"))
            body = report(
                self.mac,
                "health_result",
                version=self.version,
                boot_id=self.boot_id,
                command_id=command["id"],
                exit_code=code,
                output=output,
            )
            self.send(body)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Fleet:
    """20 nodes of label demo."""

    def __init__(self, broker: Broker, ws: Workspace) -> None:
        self.broker, self.ws = broker, ws
        self.health: dict[str, tuple[int, str]] = {}  # MAC -> exit code, output
        self.health_gate = threading.Event()
        self.health_gate.set()
        self.nodes = {mac: Node(self, mac) for mac in MACS}

    def menu_version(self, mac: str) -> str:
        tftp = self.ws.root / "tftp"
        menu = tftp / pxelinux_mac_path(mac)
        text = (menu if menu.exists() else tftp / "pxelinux.cfg" / "default").read_text()
        found = VERSION_ARG.search(text)
        assert found is not None, text
        return found.group(1)

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()


MANUAL = 'activation = "manual"\nauto_reboot = true\ncanary_timeout = 120\n'


class Lab:
    def __init__(self, tmp_path: Path, broker: Broker, label: str = MANUAL) -> None:
        extra = "debounce_quiet = 0.3\n" + broker.mqtt_config()
        self.http_port = free_port()
        self.ws = Workspace(
            tmp_path,
            keep_versions=5,
            extra_config=extra,
            http=f'listen = "127.0.0.1:{self.http_port}"',
        )
        make_root_tree(self.ws.tree)
        self.ws.write()
        self.ws.config.write_text(self.ws.config.read_text() + label)
        self.ws.run("build", "demo", "--activate")
        self.collector = Collector(broker.port)
        self.controller = Controller(self.ws).start()
        self.fleet = Fleet(broker, self.ws)

    def build(self, tag: str) -> str:
        (self.ws.tree / "etc" / "motd").write_text(f"{tag}\n")
        return str(self.ws.json("build", "demo")["version"]["version"])

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["mac"]: n for n in self.ws.json("nodes")}

    def rollout_events(self, version: str) -> list[dict[str, Any]]:
        """Image events of the label from the rollout of version on, as the subscriber got them."""
        events = self.collector.events(topic="netroot/events/image/demo")
        start = next(
            i
            for i, e in enumerate(events)
            if e["type"] == "org.netroot.image.canary_started" and e["data"]["version"] == version
        )
        return [e for e in events[start:] if not e["type"].startswith("org.netroot.image.build")]

    def close(self) -> None:
        self.fleet.close()
        self.controller.cleanup()
        self.collector.close()


@pytest.fixture
def lab(tmp_path: Path, broker: Broker) -> Iterator[Lab]:
    lab = Lab(tmp_path, broker)
    try:
        yield lab
    finally:
        lab.close()


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"].removeprefix("org.netroot.image.") for e in events]


def all_on(lab: Lab, version: str) -> bool:
    nodes = lab.nodes()
    return len(nodes) == 20 and all(
        n["version"] == version and n["state"] == "up" for n in nodes.values()
    )


def fleet_up(lab: Lab) -> str:
    """Boot every node on the active version; return that version once all report it."""
    v1 = lab.ws.active()
    assert v1 is not None
    for node in lab.fleet.nodes.values():
        node.boot()
    wait_for(lambda: all_on(lab, v1), "20 nodes up on v1")
    return v1


def test_canaries_pass_then_the_label_activates_and_a_failing_canary_reverts_all(
    lab: Lab,
) -> None:
    v1 = fleet_up(lab)

    # --- 3 canaries of 20 pass ------------------------------------------------
    v2 = lab.build("v2")
    asked = lab.ws.json("activate", "demo", v2, "--canary", "3")
    canaries = MACS[:3]  # the first live nodes by MAC
    assert asked["canaries"] == canaries and asked["previous"] == v1
    lab.collector.wait_event("image.activated", version=v2, reason="canary")
    others = [m for m in MACS if m not in canaries]
    # Canaries went stale against v2 when pinned (their reboot); the others once it was active.
    stale = lab.collector.wait_event("node.stale", count=20, active_version=v2)
    assert sorted(e["data"]["mac"] for e in stale[:3]) == canaries
    assert sorted(e["data"]["mac"] for e in stale[3:20]) == others
    assert lab.ws.active() == v2
    events = lab.rollout_events(v2)
    assert kinds(events) == [
        "canary_started",
        *["canary_node_passed"] * 3,
        "canary_passed",
        "activated",
    ]
    assert events[0]["data"]["macs"] == canaries and events[0]["data"]["rebooting"] is True
    assert sorted(e["data"]["mac"] for e in events[1:4]) == canaries
    for mac in canaries:  # each canary rebooted once into v2 and was asked its health once
        assert [c["command"] for c in lab.fleet.nodes[mac].commands] == ["reboot", "health"]
    assert not (lab.ws.root / "tftp" / pxelinux_mac_path(canaries[0])).exists()  # unpinned
    wait_for(lambda: all_on(lab, v2), "the 17 others rebooted into v2 (auto_reboot)")

    # --- a canary fails its health check --------------------------------------
    v3 = lab.build("v3")
    bad = MACS[1]
    lab.fleet.health[bad] = (1, "State: degraded\nfailed units: 1")
    lab.fleet.health_gate.clear()  # the answers wait: the rollout is seen running
    lab.ws.run("activate", "demo", v3, "--canary-macs", ",".join(canaries).upper())
    lab.collector.wait_event("image.canary_started", version=v3)
    pinned = lab.ws.root / "tftp" / pxelinux_mac_path(bad)
    assert f"netroot.version={v3}" in pinned.read_text()
    assert f"netroot.version={v3}" not in (lab.ws.root / "tftp/pxelinux.cfg/default").read_text()
    status = lab.ws.json("status")
    [running] = [r for r in status["rollouts"] if r["phase"] == "running"]
    assert (running["version"], [c["mac"] for c in running["canaries"]]) == (v3, canaries)
    api = f"http://127.0.0.1:{lab.http_port}/api/v1/rollouts"
    with urllib.request.urlopen(api, timeout=30) as response:
        assert json.loads(response.read()) == status["rollouts"]
    lab.fleet.health_gate.set()

    failed = lab.collector.wait_event("image.canary_failed", version=v3)[0]["data"]
    assert (failed["check"], failed["mac"], failed["exit_code"]) == ("health", bad, 1)
    assert failed["output_tail"].endswith("failed units: 1")
    assert failed["previous"] == v2
    # Everything returns to the previous version; no node is left on the failed one.
    wait_for(lambda: all_on(lab, v2), "every node back on v2")
    assert lab.ws.active() == v2
    assert not pinned.exists()
    got = kinds(lab.rollout_events(v3))
    assert got[0] == "canary_started" and got[-1] == "canary_failed", got
    assert set(got[1:-1]) <= {"canary_node_passed"}
    assert "activated" not in got
    for mac in canaries:  # pinned, rebooted into v3, checked; then back to v2
        assert [c["command"] for c in lab.fleet.nodes[mac].commands][-3:] == [
            "reboot",
            "health",
            "reboot",
        ]
    text = lab.ws.run("status").stdout
    assert f"{v3} failed" in text and f"health {bad}" in text


def test_a_restart_mid_rollout_fails_it_and_reverts_the_canaries(lab: Lab) -> None:
    v1 = fleet_up(lab)
    v2 = lab.build("v2")
    lab.fleet.health_gate.clear()  # canaries boot v2, their answers wait
    lab.ws.run("activate", "demo", v2, "--canary", "2")
    wait_for(
        lambda: sum(lab.nodes()[m]["version"] == v2 for m in MACS[:2]) == 2,
        "both canaries booted v2",
    )
    assert lab.controller.stop() == 0
    lab.controller = Controller(lab.ws).start()
    failed = lab.collector.wait_event("image.canary_failed", version=v2)[0]["data"]
    assert failed["check"] == "restart" and "restarted" in failed["detail"]
    lab.fleet.health_gate.set()  # late answers of the old rollout change nothing
    wait_for(lambda: all_on(lab, v1), "both canaries back on v1")
    assert lab.ws.active() == v1
    assert not (lab.ws.root / "tftp" / pxelinux_mac_path(MACS[0])).exists()


def test_activation_canary_sends_every_daemon_build_through_a_rollout(
    tmp_path: Path, broker: Broker
) -> None:
    label = 'activation = "canary"\ncanary_count = 2\nauto_reboot = true\n'
    lab = Lab(tmp_path, broker, label)
    try:
        v1 = fleet_up(lab)
        (lab.ws.tree / "etc" / "motd").write_text("v2\n")  # the daemon builds it
        started = lab.collector.wait_event("image.canary_started")[0]["data"]
        assert (started["reason"], started["macs"], started["previous"]) == ("auto", MACS[:2], v1)
        v2 = started["version"]
        lab.collector.wait_event("image.activated", version=v2, reason="canary")
        assert kinds(lab.rollout_events(v2)) == [
            "canary_started",
            *["canary_node_passed"] * 2,
            "canary_passed",
            "activated",
        ]
        wait_for(lambda: all_on(lab, v2), "every node on v2")
    finally:
        lab.close()


def test_a_daemon_build_during_a_rollout_is_activated_once_it_ended(
    tmp_path: Path, broker: Broker
) -> None:
    lab = Lab(tmp_path, broker, 'activation = "auto"\nauto_reboot = true\ncanary_timeout = 120\n')
    try:
        v1 = fleet_up(lab)
        (lab.ws.tree / "etc" / "motd").write_text("v2\n")  # the daemon builds and activates it
        v2 = lab.collector.wait_event("image.activated", reason="auto")[0]["data"]["version"]
        wait_for(lambda: all_on(lab, v2), "every node on v2")
        lab.fleet.health_gate.clear()  # the rollout stays running
        lab.ws.run("activate", "demo", v1, "--canary", "2")
        lab.collector.wait_event("image.canary_started", version=v1)
        refused = lab.ws.run("rollback", "demo", check=False)
        assert refused.returncode == 1 and "rollback demo: canary rollout" in refused.stderr
        (lab.ws.tree / "etc" / "motd").write_text("v3\n")  # built during the rollout
        wait_for(
            lambda: (
                "activation waits for the label's canary rollout" in lab.controller.log.read_text()
            ),
            "the build's activation waits",
        )
        assert lab.ws.active() == v2
        lab.fleet.health_gate.set()
        auto = lab.collector.wait_event("image.activated", 2, reason="auto")[1]["data"]
        assert auto["version"] not in (v1, v2) and auto["previous"] == v1
        assert kinds(lab.rollout_events(v1))[-2:] == ["activated", "activated"]
        assert lab.ws.active() == auto["version"]
    finally:
        lab.close()


def test_abort_canary_stops_a_running_rollout_and_frees_the_label(lab: Lab) -> None:
    v1 = fleet_up(lab)
    v2 = lab.build("v2")
    lab.fleet.health_gate.clear()  # canaries boot v2, their answers wait: it keeps running
    lab.ws.run("activate", "demo", v2, "--canary", "2")
    lab.collector.wait_event("image.canary_started", version=v2)
    refused = lab.ws.run("activate", "demo", v2, check=False)
    assert refused.returncode == 1
    assert "netroot activate demo --abort-canary" in refused.stderr, refused.stderr

    done = lab.ws.json("activate", "demo", "--abort-canary")
    assert (done["version"], done["outcome"], done["active"]) == (v2, "aborted", v1)
    failed = lab.collector.wait_event("image.canary_failed", version=v2)[0]["data"]
    assert (failed["check"], failed["previous"]) == ("aborted", v1)
    assert not (lab.ws.root / "tftp" / pxelinux_mac_path(MACS[0])).exists()  # unpinned
    lab.fleet.health_gate.set()  # late answers of the stopped rollout change nothing
    wait_for(lambda: all_on(lab, v1), "both canaries back on v1")
    assert kinds(lab.rollout_events(v2)) == ["canary_started", "canary_failed"]

    again = lab.ws.run("activate", "demo", "--abort-canary", check=False)
    assert again.returncode == 1 and "no canary rollout" in again.stderr, again.stderr
    assert "Traceback" not in again.stderr
    lab.ws.run("activate", "demo", v2)  # the hand activation goes through now
    assert lab.ws.active() == v2
