"""The example mosquitto configuration and ACL in config/, on a real mosquitto: a node
reaches only its own topics, only the controller writes events, states and commands,
and the controller connects with its username and password file."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import REPO, Workspace, make_root_tree
from test_daemon_harness import Broker, Controller, free_port, wait_for

pytestmark = pytest.mark.integration

A = "52:54:00:00:03:0a"
B = "52:54:00:00:03:0b"
SECRET = {"netroot-controller": "controller-secret", "netroot-monitor": "monitor-secret"}


@dataclass
class Site:
    broker: Broker
    admin_port: int  # loopback listener: passwords
    node_port: int  # node listener: anonymous, client id = MAC

    def pub(self, topic: str, payload: str, *, client: str, user: str | None = None) -> None:
        """Publish one message as a node (client id) or as a user."""
        port = self.node_port if user is None else self.admin_port
        auth = ["-u", user, "-P", SECRET[user]] if user else []
        subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-i", client,
             *auth, "-t", topic, "-m", payload],
            check=True, timeout=30,
        )


class Subscription:
    """mosquitto_sub collecting `count` messages of one topic filter."""

    def __init__(self, site: Site, topic: str, count: int, *, client: str,
                 user: str | None = None) -> None:
        port = site.node_port if user is None else site.admin_port
        auth = ["-u", user, "-P", SECRET[user]] if user else []
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-i", client,
             *auth, "-t", topic, "-C", str(count), "-W", "30", "-F", "%t %p"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        log = site.broker.log
        wait_for(lambda: f"Received SUBSCRIBE from {client}" in log.read_text(), "subscribed")

    def lines(self) -> list[str]:
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return out.splitlines()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    admin, nodes = free_port(), free_port()
    passwd, acl = tmp_path / "netroot.passwd", tmp_path / "netroot.acl"
    for i, (user, secret) in enumerate(SECRET.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(["mosquitto_passwd", *create, "-b", str(passwd), user, secret], check=True)
    acl.write_text((REPO / "config" / "mosquitto-acl.example").read_text())
    text = (REPO / "config" / "mosquitto.conf.example").read_text()
    text = (
        text.replace("listener 1883 127.0.0.1", f"listener {admin} 127.0.0.1")
        .replace("listener 1883 10.0.2.2", f"listener {nodes} 127.0.0.1")
        .replace("/etc/mosquitto/netroot.passwd", str(passwd))
        .replace("/etc/mosquitto/netroot.acl", str(acl))
        .replace("/var/lib/mosquitto/", f"{tmp_path}/")
    )
    broker = Broker(tmp_path / "broker", port=admin, config_text=text).start()
    wait_for(lambda: "Opening ipv4 listen socket on port " + str(nodes) in broker.log.read_text(),
             "the node listener")
    yield Site(broker, admin, nodes)
    broker.stop()


def test_a_node_reaches_only_its_own_topics(site: Site) -> None:
    controller = Subscription(site, "netroot/#", 2, client="ctl", user="netroot-controller")
    site.pub(f"netroot/node/{B}/report", "A speaks for B", client=A)
    site.pub("netroot/events/image/demo", "A fakes an event", client=A)
    site.pub("netroot/state/node/" + B, "A fakes a state", client=A)
    site.pub(f"netroot/node/{B}/cmd", "A commands B", client=A)
    site.pub(f"netroot/node/{A}/report", "A reports", client=A)
    site.pub(f"netroot/node/{B}/report", "B reports", client=B)
    assert controller.lines() == [f"netroot/node/{A}/report A reports",
                                  f"netroot/node/{B}/report B reports"]


def test_a_node_reads_only_its_own_commands(site: Site) -> None:
    at_a = Subscription(site, "netroot/node/+/cmd", 1, client=A)
    site.pub(f"netroot/node/{B}/cmd", "for B", client="ctl", user="netroot-controller")
    site.pub(f"netroot/node/{A}/cmd", "for A", client="ctl", user="netroot-controller")
    assert at_a.lines() == [f"netroot/node/{A}/cmd for A"]


def test_only_the_controller_writes_events_states_and_commands(site: Site) -> None:
    monitor = Subscription(site, "netroot/#", 2, client="mon", user="netroot-monitor")
    site.pub("netroot/events/image/demo", "from the monitor", client="mon2", user="netroot-monitor")
    site.pub("netroot/events/image/demo", "from a node", client=A)
    site.pub("netroot/events/image/demo", "event", client="ctl", user="netroot-controller")
    site.pub("netroot/state/image/demo", "state", client="ctl", user="netroot-controller")
    assert monitor.lines() == ["netroot/events/image/demo event", "netroot/state/image/demo state"]


def test_the_controller_connects_with_username_and_password_file(
    site: Site, tmp_path: Path
) -> None:
    secret = tmp_path / "mqtt.password"
    secret.write_text(SECRET["netroot-controller"] + "\n")
    mqtt = (
        f'[mqtt]\nhost = "127.0.0.1"\nport = {site.admin_port}\n'
        f'username = "netroot-controller"\npassword_file = "{secret}"\n'
    )
    ws = Workspace(tmp_path / "ws", extra_config=mqtt)
    make_root_tree(ws.tree)
    ws.write()
    ws.run("build", "demo", "--activate")  # reports are accepted only for a version that exists
    status = Subscription(site, "netroot/controller/status", 1, client="mon",
                          user="netroot-monitor")
    controller = Controller(ws).start()
    try:
        (line,) = status.lines()
        assert json.loads(line.split(" ", 1)[1])["data"]["status"] == "online"
        # A node's report through the node listener reaches the daemon's subscription.
        report = {"kind": "heartbeat", "mac": A, "label": "demo", "version": ws.active()}
        site.pub(f"netroot/node/{A}/report", json.dumps(report), client=A)
        wait_for(lambda: [n for n in ws.json("nodes") if n["mac"] == A], "the node stored")
    finally:
        controller.cleanup()
