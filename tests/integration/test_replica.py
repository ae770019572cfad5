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
again, the replica catches up. Not here: Ganesha serving each namespace's
store and a VM booting from the replica (README, "What is tested where").
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from integration.harness import Collector, Controller, wait_for
from support import REPO, Workspace, make_root_tree

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PRIMARY, REPLICA = "10.77.5.1", "10.77.5.2"
MQTT_PORT, HTTP_PORT = 1883, 9650
CLONE_NEWNET = 0x40000000
MAC = "52:54:00:aa:bb:01"
BOOT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"

T = TypeVar("T")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=30)


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """fn's result, run in a thread that joined network namespace ns: the sockets it
    opens, and the threads it starts (paho's loop), live there."""
    out: dict[str, Any] = {}

    def target() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                out["error"] = OSError(ctypes.get_errno(), "setns")
                return
        finally:
            os.close(fd)
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]  # type: ignore[no-any-return]


def listening(ns: str, port: int) -> bool:
    def probe() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
        except OSError:
            return False
        return True

    return in_netns(ns, probe)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    """(primary ns, replica ns), joined by a veth pair; removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("network namespaces need root and iproute2 (run .ci/setup as root)")
    tag = uuid.uuid4().hex[:6]
    pns, rns = f"nr-pri-{tag}", f"nr-rep-{tag}"
    pif, rif = f"nrp{tag}", f"nrr{tag}"
    ip("netns", "add", pns)
    ip("netns", "add", rns)
    try:
        ip("link", "add", pif, "type", "veth", "peer", "name", rif)
        ip("link", "set", pif, "netns", pns)
        ip("link", "set", rif, "netns", rns)
        ip("-n", pns, "addr", "add", f"{PRIMARY}/24", "dev", pif)
        ip("-n", rns, "addr", "add", f"{REPLICA}/24", "dev", rif)
        for ns, dev in ((pns, pif), (rns, rif)):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", dev, "up")
        yield pns, rns
    finally:
        for ns in (pns, rns):
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)


class NsBroker:
    """mosquitto in a namespace, on MQTT_PORT, with the given config lines."""

    def __init__(self, ns: str, root: Path, lines: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.ns, self.log = ns, root / "mosquitto.log"
        conf = root / "mosquitto.conf"
        conf.write_text(f"{lines}\nuser root\nlog_dest file {self.log}\nlog_type all\n")
        with (root / "stderr").open("wb") as stderr:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, "mosquitto", "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        wait_for(lambda: listening(ns, MQTT_PORT), f"mosquitto in {ns}", timeout=20)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def shipped_bridge() -> str:
    """config/mosquitto-replica.conf.example as shipped, pointed at this test's primary."""
    text = (REPO / "config" / "mosquitto-replica.conf.example").read_text()
    text = re.sub(r"(?m)^address .*$", f"address {PRIMARY}:{MQTT_PORT}", text)
    # This test's primary broker is anonymous and without TLS.
    return re.sub(r"(?m)^(remote_username|remote_password|bridge_cafile) .*$", "", text)


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
    rns: str

    def start_replica(self) -> None:
        netns = ("ip", "netns", "exec", self.rns)
        self.r_ctl = Controller(self.replica, prefix=netns, args=("--role", "replica"))
        self.r_ctl.start()


def _workspaces(tmp_path: Path) -> tuple[Workspace, Workspace]:
    token = tmp_path / "primary.token"
    token.write_text("replica-test-token-0123456789\n")
    token.chmod(0o600)
    mqtt = f'[mqtt]\nhost = "127.0.0.1"\nport = {MQTT_PORT}\nstatus_interval = 2\n'
    primary = Workspace(
        tmp_path / "primary",
        extra_config=f'server = "{PRIMARY}"\ndebounce_quiet = 0.2\ndebounce_max_latency = 2\n'
        f'{mqtt}[replication]\nname = "boot1"\nreplicas_required = 1\nack_timeout = 15\n',
        http=f'listen = "{PRIMARY}:{HTTP_PORT}"\ntoken_file = "{token}"',
    )
    make_root_tree(primary.tree, files=400)
    replica = Workspace(
        tmp_path / "replica",
        extra_config=f'server = "{REPLICA}"\n{mqtt}[replication]\nname = "boot2"\n'
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
    found = Sites(primary, replica, collector, p_ctl, p_ctl, rns)
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
    return v2


def _node_of_the_replica(s: Sites, version: str) -> None:
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


def test_a_replica_copies_acknowledges_and_follows_and_gates_the_primary(sites: Sites) -> None:
    _first_version(sites)
    v2 = _overlay_edit(sites)
    _node_of_the_replica(sites, v2)
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
    env = {"NETROOT_ROLE": "replica"}
    shown = sites.replica.run("status", env=env).stdout
    assert f"replication: replica boot2 of http://{PRIMARY}:{HTTP_PORT}" in shown, shown
    # A replica's operator cannot activate by hand: the primary decides.
    hand = sites.replica.run("activate", "demo", v2, check=False, env=env)
    assert hand.returncode != 0 and "this server is a replica" in hand.stderr
