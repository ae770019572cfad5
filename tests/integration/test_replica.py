"""Two boot servers in two network namespaces: a primary and a replica following it.

Each namespace has its own mosquitto and its own controller with its own
state directory; the replica's broker bridges to the primary's with the
shipped config/mosquitto-replica.conf.example (only the address and the
credentials changed: this test's primary broker has no TLS). The replica
fetches versions over the primary's HTTP API with a bearer token.

What a site would check, from outside: a paho subscriber on the primary's
broker sees the replica's acknowledgement before the activation it allows,
and the replica's node states; `netroot versions` and `verify --deep` on the
replica show the primary's versions, active as on the primary; with the
replica stopped, the primary refuses to activate and says why; started
again, the replica catches up; each server's own NFS-Ganesha, configured as
`netroot render ganesha` prints for it, serves the same bytes (read with
libnfs's nfs-cat). tests/integration/test_boot_e2e.py boots a VM from a replica.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from integration.harness import Collector, Controller, wait_for
from integration.twoservers import (
    HTTP_PORT,
    MQTT_PORT,
    PRIMARY,
    REPLICA,
    NsBroker,
    in_netns,
    nfs_read,
    ns_ganesha,
    shipped_bridge,
    two_namespaces,
)
from support import Workspace, make_root_tree

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MAC = "52:54:00:aa:bb:01"  # a node of the replica
MAC_P = "52:54:00:aa:bb:02"  # a node of the primary
BOOT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    """(primary ns, replica ns)."""
    with two_namespaces() as found:
        yield found


def versions(ws: Workspace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(ws.run("versions", "demo", "--json").stdout)
    return rows


def active(ws: Workspace) -> str | None:
    return next((r["version"] for r in versions(ws) if r["active"]), None)


def overlay_builds(collector: Collector, count: int) -> list[str]:
    """The versions of the daemon's overlay builds, once there are count of them."""

    def probe() -> list[str] | None:
        built = collector.events("image.build.succeeded")
        found = [e["data"]["version"] for e in built if e["data"]["kind"] == "overlay"]
        return found if len(found) >= count else None

    return wait_for(probe, f"{count} overlay build(s) on the primary")


def types_in_order(collector: Collector, version: str) -> list[str]:
    """The event types about version the primary's broker delivered, in arrival order."""
    return [
        e["type"].removeprefix("org.netroot.")
        for e in collector.events()
        if e.get("data", {}).get("version") == version
    ]


@dataclass
class Sites:
    """The two servers of the test, started."""

    primary: Workspace
    replica: Workspace
    collector: Collector  # paho, on the primary's broker
    p_ctl: Controller
    r_ctl: Controller
    pns: str
    rns: str

    def start_replica(self) -> None:
        netns = ("ip", "netns", "exec", self.rns)
        self.r_ctl = Controller(self.replica, prefix=netns, args=("--role", "replica"))
        self.r_ctl.start()


def _workspaces(tmp_path: Path) -> tuple[Workspace, Workspace]:
    token = tmp_path / "primary.token"
    token.write_text("replica-test-token-0123456789\n")
    token.chmod(0o600)
    common = f'[mqtt]\nhost = "127.0.0.1"\nport = {MQTT_PORT}\nstatus_interval = 2\n'
    # each server's own NFS server serves its store to its namespace's loopback (nfs-cat)
    common += '[nfs]\nclients = ["127.0.0.0/8"]\ninsecure = true\n'
    primary = Workspace(
        tmp_path / "primary",
        extra_config=f'server = "{PRIMARY}"\ndebounce_quiet = 0.2\ndebounce_max_latency = 2\n'
        f'{common}[replication]\nname = "boot1"\nreplicas_required = 1\nack_timeout = 15\n',
        http=f'listen = "{PRIMARY}:{HTTP_PORT}"\ntoken_file = "{token}"',
    )
    make_root_tree(primary.tree, files=400)
    replica = Workspace(
        tmp_path / "replica",
        extra_config=f'server = "{REPLICA}"\n{common}[replication]\nname = "boot2"\n'
        f'primary_url = "http://{PRIMARY}:{HTTP_PORT}"\ntoken_file = "{token}"\n'
        "retry_interval = 2\n",
    )
    return primary.write(), replica.write()


@pytest.fixture
def sites(tmp_path: Path, namespaces: tuple[str, str]) -> Iterator[Sites]:
    """Both brokers (bridged), both controllers (the replica as `serve --role replica`)."""
    pns, rns = namespaces
    primary, replica = _workspaces(tmp_path)
    anonymous = f"listener {MQTT_PORT} 0.0.0.0\nallow_anonymous true"
    p_broker = NsBroker(pns, tmp_path / "p-broker", anonymous)
    bridged = f"listener {MQTT_PORT} 127.0.0.1\nallow_anonymous true\n{shipped_bridge()}"
    r_broker = NsBroker(rns, tmp_path / "r-broker", bridged)
    collector = in_netns(pns, lambda: Collector(MQTT_PORT))
    p_ctl = Controller(primary, prefix=("ip", "netns", "exec", pns))
    found = Sites(primary, replica, collector, p_ctl, p_ctl, pns, rns)
    try:
        wait_for(lambda: "netroot-bridge-boot2" in p_broker.text(), "the replica's bridge")
        p_ctl.start()
        found.start_replica()
        yield found
    finally:
        collector.close()
        for ctl in (p_ctl, found.r_ctl):
            ctl.cleanup()
        p_broker.stop()
        r_broker.stop()


def _hostile_news(s: Sites, pns: str) -> None:
    """What is not a netroot event, or names a label or version no one has, is logged and
    ignored: neither server stops, nothing is recorded."""
    evil = {
        "specversion": "1.0",
        "id": "x",
        "source": "netroot://evil",
        "type": "org.netroot.image.replicated",
        "time": "2026-01-01T00:00:00Z",
        "data": {
            "label": "demo",
            "replica": "evil",
            "version": "../../etc",
            "fetched_files": 0,
            "fetched_bytes": 0,
            "linked_files": 0,
            "duration_s": 0,
        },
    }
    bad = [b"not json", b'{"specversion": "1.0"}', json.dumps(evil).encode()]
    topics = ((pns, "netroot/events/replica/evil"), (s.rns, "netroot/primary/events/image/demo"))
    for ns, topic in topics:
        for payload in bad:
            pub = ["mosquitto_pub", "-p", str(MQTT_PORT), "-q", "1", "-t", topic, "-s"]
            subprocess.run(["ip", "netns", "exec", ns, *pub], input=payload, check=True, timeout=30)
    s.p_ctl.wait_log("not a netroot event; ignored", count=len(bad))
    s.r_ctl.wait_log("not a netroot event; ignored", count=len(bad))
    assert s.p_ctl.alive() and s.r_ctl.alive()
    assert not (s.primary.images() / "replicas.json").exists()


def _first_version(s: Sites) -> str:
    """A version built on the primary by hand is copied, verified and acknowledged; only
    then can it be activated, and the replica activates it too."""
    s.primary.run("build", "demo")
    (v1,) = [r["version"] for r in versions(s.primary)]
    ack = s.collector.wait_event("image.replicated", version=v1, replica="boot2")[0]
    assert ack["source"] == "netroot://boot2"
    assert s.collector.events("image.build.succeeded")[0]["source"] == "netroot://boot1"
    assert ack["data"]["linked_files"] == 0 and ack["data"]["fetched_files"] > 400
    s.primary.run("activate", "demo", v1)
    wait_for(lambda: active(s.replica) == v1, "the replica to activate v1")
    s.replica.run("verify", "demo", v1, "--deep")
    assert s.replica.export_link.resolve() == s.replica.images() / v1 / "rootfs"
    return str(v1)


def _overlay_edit(s: Sites) -> str:
    """The primary's daemon builds an edit, waits for the acknowledgement, activates; the
    replica fetched only what changed and follows."""
    (s.primary.overlays / "common" / "etc").mkdir(parents=True)
    (s.primary.overlays / "common" / "etc" / "motd").write_text("replicated\n")
    v2 = overlay_builds(s.collector, 1)[-1]
    s.collector.wait_event("image.activated", version=v2)
    order = types_in_order(s.collector, v2)
    assert order.index("image.replicated") < order.index("image.activated"), order
    ack = s.collector.events("image.replicated")[-1]["data"]
    assert ack["version"] == v2 and ack["linked_files"] > 400 and ack["fetched_files"] <= 3
    wait_for(lambda: active(s.replica) == v2, "the replica to activate v2")
    assert (s.replica.images() / v2 / "rootfs" / "etc" / "motd").read_text() == "replicated\n"
    # Each server serves it with its own NFS server, configured as `netroot render ganesha`
    # prints for it: the same bytes over NFSv4 from either namespace.
    for ws, ns in ((s.primary, s.pns), (s.replica, s.rns)):
        with ns_ganesha(ns, ws.root / "ganesha", ws.run("render", "ganesha").stdout):
            assert nfs_read(ns, f"demo/{v2}/etc/motd") == "replicated\n"
    return v2


def _node_of_the_replica(s: Sites, pns: str, version: str) -> None:
    """A node booted from the replica reports to the replica's broker (mosquitto_pub as the
    agent); the replica tracks it, and the primary's broker shows its state."""
    report = {
        "kind": "boot", "mac": MAC, "label": "demo", "version": version, "boot_id": BOOT_ID,
        "ip": "10.77.5.50", "root": {"fstype": "nfs4", "source": f"{REPLICA}:/demo"},
    }  # fmt: skip
    topic = f"netroot/node/{MAC}/report"
    pub = ["mosquitto_pub", "-p", str(MQTT_PORT), "-q", "1", "-t", topic, "-m", json.dumps(report)]
    subprocess.run(["ip", "netns", "exec", s.rns, *pub], check=True, timeout=30)

    def node_state() -> dict[str, Any] | None:
        found = [m for m in s.collector.all() if m.topic == f"netroot/state/node/{MAC}"]
        return found[-1].json() if found else None

    state = wait_for(node_state, "the replica's node state on the primary's broker")
    assert state["data"]["version"] == version and state["data"]["state"] in ("booting", "up")
    replica_nodes = json.loads(s.replica.run("nodes", "--json").stdout)
    assert [n["mac"] for n in replica_nodes] == [MAC]
    # A node of the primary, reported to the primary's broker.
    report.update(mac=MAC_P, ip="10.77.5.60", root={"fstype": "nfs4", "source": f"{PRIMARY}:/demo"})
    topic = f"netroot/node/{MAC_P}/report"
    pub = ["mosquitto_pub", "-p", str(MQTT_PORT), "-q", "1", "-t", topic, "-m", json.dumps(report)]
    subprocess.run(["ip", "netns", "exec", pns, *pub], check=True, timeout=30)
    # Each server tracks its own nodes; `nodes --fleet` on either shows both, by server.
    for ws, own, other, mac in (
        (s.primary, "boot1", "boot2", MAC_P),
        (s.replica, "boot2", "boot1", MAC),
    ):

        def both(ws: Workspace = ws) -> list[tuple[str, str]] | None:
            rows = json.loads(ws.run("nodes", "--fleet", "--json").stdout)
            found = sorted((r["server"], r["mac"]) for r in rows)
            return found if len(found) == 2 else None

        expected = sorted([(own, mac), (other, MAC if mac == MAC_P else MAC_P)])
        assert wait_for(both, f"both nodes in {own}'s `nodes --fleet`") == expected
        assert [n["mac"] for n in json.loads(ws.run("nodes", "--json").stdout)] == [mac]


def _replica_down(s: Sites, current: str) -> str:
    """The replica stopped: the primary's next build is not activated, and a hand
    activation is refused with the reason; the active version stays."""
    s.r_ctl.stop()
    (s.primary.overlays / "common" / "etc" / "motd").write_text("unreplicated\n")
    v3 = overlay_builds(s.collector, 2)[-1]
    s.p_ctl.wait_log("held by 0 of the 1 replicas")
    assert active(s.primary) == current
    refused = s.primary.run("activate", "demo", v3, check=False)
    said = refused.stderr.strip().splitlines()
    assert refused.returncode != 0
    assert len(said) == 1 and "held by 0 of the 1 replicas" in said[0], refused.stderr
    assert active(s.primary) == current
    return v3


def test_a_replica_copies_acknowledges_and_follows_and_gates_the_primary(
    sites: Sites, namespaces: tuple[str, str]
) -> None:
    _hostile_news(sites, namespaces[0])
    _first_version(sites)
    v2 = _overlay_edit(sites)
    _node_of_the_replica(sites, namespaces[0], v2)
    v3 = _replica_down(sites, v2)
    # Started again, the replica catches up (it missed the build's event) and
    # acknowledges; now the activation goes through, and the replica follows.
    sites.start_replica()
    sites.collector.wait_event("image.replicated", version=v3, replica="boot2")
    sites.primary.run("activate", "demo", v3)
    wait_for(lambda: active(sites.replica) == v3, "the replica to activate v3")
    sites.replica.run("verify", "demo", v3, "--deep")
    status = json.loads(sites.primary.run("status", "--json").stdout)["replication"]
    assert status["replicas_required"] == 1 and status["held_by"]["demo"][v3] == ["boot2"]
    # The replica runs as `serve --role replica`, its config file says nothing of a
    # role: the commands beside it take the role the running daemon serves.
    shown = sites.replica.run("status").stdout
    assert f"replication: replica boot2 of http://{PRIMARY}:{HTTP_PORT}" in shown, shown
    # A replica's operator cannot activate by hand: the primary decides.
    hand = sites.replica.run("activate", "demo", v2, check=False)
    assert hand.returncode != 0 and "this server is a replica" in hand.stderr
