"""The shipped broker setup (config/mosquitto.conf.example with its two ACL examples)
on a real mosquitto, with the shipped node agent's own commands: every listener
authenticates, a node (TLS client certificate, CN = its MAC) reaches only its own
topics, only the controller writes events, states and commands, the monitor reads
them, and no username is taken without its secret.

mosquitto_pub exits 0 when the ACL drops its message, so every denial is checked
where it would show: at a subscriber, which gets a later allowed message first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from integration.harness import Broker, Controller, free_port, wait_for
from support import REPO, Workspace, make_root_tree

from controller.config.models import MqttConfig
from controller.core.errors import NetrootError
from controller.vm import broker as upbroker

pytestmark = pytest.mark.integration

AGENT = REPO / "base" / "usr" / "lib" / "netroot" / "agent"
A = "52:54:00:00:03:0a"
B = "52:54:00:00:03:0b"
VERSION = "20260101T120000.000Z-1a2b3c4d"
SECRET = {"netroot-controller": "controller-secret", "netroot-monitor": "monitor-secret"}


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def issue(ca: Path, name: str, cn: str, out: Path, san: str | None = None) -> None:
    """`name`.crt and `name`.key in out: a P-256 key and its certificate signed by ca."""
    key, csr, crt = out / f"{name}.key", out / f"{name}.csr", out / f"{name}.crt"
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", csr, "-subj", f"/CN={cn}")  # fmt: skip
    ext = out / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca / "ca.crt", "-CAkey", ca / "ca.key",
            "-CAcreateserial", "-out", crt, "-days", "2", "-extfile", ext)  # fmt: skip


@dataclass
class Site:
    broker: Broker
    admin_port: int  # loopback listener: passwords
    node_port: int  # node listener: client certificates
    pki: Path
    root: Path
    agents: list[subprocess.Popen[str]] = field(default_factory=list)

    def tls(self, cert: str | None) -> list[str]:
        """TLS options of a client on the node listener (cert: a node's, or none)."""
        opts = ["--cafile", str(self.pki / "ca.crt")]
        if cert is not None:
            opts += ["--cert", str(self.pki / f"{cert}.crt")]
            opts += ["--key", str(self.pki / f"{cert}.key")]
        return opts

    def node_pub(self, topic: str, payload: str, *, cert: str, user: str | None = None) -> None:
        """Publish one message on the node listener with a node's certificate."""
        auth = ["-u", user] if user else []
        subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.node_port), *self.tls(cert),
             *auth, "-i", f"{cert}-test", "-q", "1", "-t", topic, "-m", payload],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip

    def pub(self, topic: str, payload: str, *, user: str, retain: bool = False) -> None:
        """Publish one message on the loopback listener as a user."""
        subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.admin_port), "-u", user,
             "-P", SECRET[user], "-i", f"{user}-pub", "-q", "1", "-t", topic, "-m", payload,
             *(["-r"] if retain else [])],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip

    def node_env(
        self, name: str, *, mac: str, cert: str | None, version: str = VERSION
    ) -> dict[str, str]:
        """A fake node for the agent: its cmdline naming the node listener, its NIC's
        MAC (mac), its root, and its certificate dir (cert's files, or none)."""
        node = self.root / "nodes" / name
        (node / "root/etc/netroot").mkdir(parents=True)
        (node / "root/etc/netroot/version").write_text(f"{version}\n")
        (node / "sys/class/net/lo").mkdir(parents=True)
        (node / "sys/class/net/lo/address").write_text(mac + "\n")
        (node / "cmdline").write_text(
            f"root=nfs4:127.0.0.1:/demo/{version} ro netroot.label=demo"
            f" netroot.mqtt=127.0.0.1:{self.node_port} netroot.heartbeat=0\n"
        )
        (node / "mountinfo").write_text(f"23 1 0:31 / / ro - nfs4 127.0.0.1:/demo/{version} ro\n")
        creds = node / "root/etc/netroot/mqtt"
        creds.mkdir()
        (creds / "ca.crt").write_bytes((self.pki / "ca.crt").read_bytes())
        if cert is not None:
            (creds / "node.crt").write_bytes((self.pki / f"{cert}.crt").read_bytes())
            (creds / "node.key").write_bytes((self.pki / f"{cert}.key").read_bytes())
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "NETROOT_CMDLINE_FILE": str(node / "cmdline"),
            "NETROOT_MOUNTINFO": str(node / "mountinfo"),
            "NETROOT_ROOT": str(node / "root"),
            "NETROOT_SYS": str(node / "sys"),
            "NETROOT_CONSOLE": str(node / "console"),
            "NETROOT_STATE_DIR": str(node / "run"),
        }

    def agent(self, command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        argv = ["sh", str(AGENT), command]
        return subprocess.run(
            argv, env=env, capture_output=True, text=True, check=False, timeout=60
        )

    def start_agent(self, env: dict[str, str]) -> subprocess.Popen[str]:
        out = Path(env["NETROOT_CONSOLE"]).with_name("agent.out").open("w")
        argv = ["sh", str(AGENT), "run"]
        agent = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)  # fmt: skip
        out.close()
        self.agents.append(agent)
        return agent


class Subscription:
    """mosquitto_sub collecting `count` messages of one topic filter: on the loopback
    listener as a user, or on the node listener with a node's certificate."""

    def __init__(
        self,
        site: Site,
        topic: str,
        count: int,
        *,
        client: str,
        user: str | None = None,
        cert: str | None = None,
        persist: bool = False,
    ) -> None:
        if user is not None:
            where = ["-p", str(site.admin_port), "-u", user, "-P", SECRET[user]]
        else:
            where = ["-p", str(site.node_port), *site.tls(cert)]
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", *where, "-q", "1", "-i", client,
             *(["-c"] if persist else []), "-t", topic, "-C", str(count), "-W", "60",
             "-F", "%t %p"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        log = site.broker.log
        wait_for(lambda: f"Received SUBSCRIBE from {client}" in log.read_text(), "subscribed")

    def lines(self) -> list[str]:
        out, err = self.proc.communicate(timeout=90)
        assert self.proc.returncode == 0, err
        return out.splitlines()


def reports(lines: list[str]) -> list[tuple[str, str, str]]:
    """(topic, kind, mac) of each report line."""
    found = []
    for line in lines:
        topic, _, payload = line.partition(" ")
        body = json.loads(payload)
        found.append((topic, body["kind"], body["mac"]))
    return found


def shipped_config(site_dir: Path, admin: int, nodes: int) -> str:
    """config/mosquitto.conf.example with its ports on free loopback ports, its files here."""
    pki = site_dir / "pki"
    passwd = site_dir / "netroot.passwd"
    passwd.write_text("".join(f"{user}:{secret}\n" for user, secret in SECRET.items()))
    subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, timeout=30)
    acl, node_acl = site_dir / "netroot.acl", site_dir / "netroot-nodes.acl"
    acl.write_text((REPO / "config" / "mosquitto-acl.example").read_text())
    node_acl.write_text((REPO / "config" / "mosquitto-nodes-acl.example").read_text())
    text = (REPO / "config" / "mosquitto.conf.example").read_text()
    replaced = {
        "listener 1883 127.0.0.1": f"listener {admin} 127.0.0.1",
        "listener 1883 10.0.2.2": f"listener {nodes} 127.0.0.1",
        "/etc/mosquitto/netroot.passwd": str(passwd),
        "/etc/mosquitto/netroot.acl": str(acl),
        "/etc/mosquitto/netroot-nodes.acl": str(node_acl),
        "/etc/mosquitto/certs/netroot-ca.pem": str(pki / "ca.crt"),
        "/etc/mosquitto/certs/boot-server.pem": str(pki / "server.crt"),
        "/etc/mosquitto/certs/boot-server.key": str(pki / "server.key"),
        "/var/lib/mosquitto/": f"{site_dir}/",
    }
    for old, new in replaced.items():
        assert old in text, f"the shipped config no longer has {old!r}"
        text = text.replace(old, new)
    return text


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    pki = tmp_path / "pki"
    pki.mkdir()
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", pki / "ca.key", "-out", pki / "ca.crt", "-days", "2",
            "-subj", "/CN=netroot test CA")  # fmt: skip
    issue(pki, "server", "127.0.0.1", pki, san="IP:127.0.0.1")
    issue(pki, A, A, pki)
    issue(pki, B, B, pki)
    # A certificate naming the controller, from another CA: the node listener trusts one CA.
    rogue = tmp_path / "rogue"
    rogue.mkdir()
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", rogue / "ca.key", "-out", rogue / "ca.crt", "-days", "2",
            "-subj", "/CN=rogue CA")  # fmt: skip
    issue(rogue, "rogue", "netroot-controller", pki)
    admin, nodes = free_port(), free_port()
    text = shipped_config(tmp_path, admin, nodes)
    broker = Broker(tmp_path / "broker", port=admin, config_text=text).start()
    wait_for(lambda: f"Opening ipv4 listen socket on port {nodes}" in broker.log.read_text(),
             "the node listener")  # fmt: skip
    site = Site(broker, admin, nodes, pki, tmp_path)
    yield site
    for agent in site.agents:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
        agent.wait(10)
    broker.stop()


TAKEOVER = "already connected, closing old connection"


def test_the_agent_reports_answers_and_reports_again_after_a_broker_restart(site: Site) -> None:
    monitor = Subscription(site, "netroot/node/+/report", 2, client="mon", user="netroot-monitor")
    # A persistent session, away while the broker restarts: it gets what came meanwhile.
    later = Subscription(site, "netroot/node/+/report", 1, client="mon-later",
                         user="netroot-monitor", persist=True)  # fmt: skip
    later.proc.terminate()
    later.proc.communicate(timeout=30)
    env = site.node_env("a", mac=A, cert=A)
    agent = site.start_agent(env)
    out = Path(env["NETROOT_CONSOLE"]).with_name("agent.out")
    log = site.broker.log
    wait_for(lambda: f"Received SUBSCRIBE from {A}" in log.read_text(), "the agent's listener")
    # The agent reads its own commands: the controller asks, it reports again.
    site.pub(f"netroot/node/{A}/cmd", json.dumps({"command": "report", "id": "c1"}),
             user="netroot-controller")  # fmt: skip
    assert reports(monitor.lines()) == [(f"netroot/node/{A}/report", "boot", A)] * 2
    # A broker restart: the listener reconnects by itself and sends its boot report again.
    site.broker.stop()
    site.broker.start()
    wait_for(lambda: "boot report published again" in out.read_text(), "the report after restart")
    assert agent.poll() is None
    resumed = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(site.admin_port), "-u", "netroot-monitor",
         "-P", SECRET["netroot-monitor"], "-q", "1", "-i", "mon-later", "-c",
         "-t", "netroot/node/+/report", "-W", "60", "-F", "%t %p"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert resumed.stdout is not None
    seen = []
    for line in resumed.stdout:  # the will the broker fired on shutdown may come first
        seen += reports([line])
        if seen[-1][1] == "boot":
            break
    resumed.terminate()
    resumed.communicate(timeout=30)
    assert seen[-1] == (f"netroot/node/{A}/report", "boot", A)
    assert {kind for _, kind, _ in seen} <= {"boot", "offline"}
    # Publishers and listener (distinct client ids) never took over each other's session.
    assert TAKEOVER not in log.read_text()


def test_a_node_cannot_publish_as_another_node(site: Site) -> None:
    controller = Subscription(site, "netroot/#", 2, client="ctl", user="netroot-controller")
    # The agent on a node whose NIC says B but whose certificate is A's speaks for B: dropped.
    forged = site.agent("report", site.node_env("a-as-b", mac=B, cert=A))
    assert f"mac {B}" in forged.stdout  # mosquitto_pub exits 0 on an ACL denial
    # A's certificate and a claimed username: the certificate's CN is its only name.
    site.node_pub(f"netroot/node/{B}/report", "A claims B", cert=A, user=B)
    # Without its certificate, B is refused outright; with it, B reports.
    refused = site.agent("report", site.node_env("b-no-cert", mac=B, cert=None))
    assert refused.returncode != 0
    assert site.agent("report", site.node_env("a", mac=A, cert=A)).returncode == 0
    assert site.agent("report", site.node_env("b", mac=B, cert=B)).returncode == 0
    assert reports(controller.lines()) == [
        (f"netroot/node/{A}/report", "boot", A),
        (f"netroot/node/{B}/report", "boot", B),
    ]


def test_a_node_reads_only_its_own_commands(site: Site) -> None:
    # Subscribed to everything: it gets its own command, and B's (sent first) never.
    at_a = Subscription(site, "netroot/#", 1, client=A, cert=A)
    for mac in (B, A):
        site.pub(f"netroot/node/{mac}/cmd", f"for {mac}", user="netroot-controller")
    assert at_a.lines() == [f"netroot/node/{A}/cmd for {A}"]
    # The agent on a node whose NIC says B but whose certificate is A's hears nothing.
    env = site.node_env("a-as-b", mac=B, cert=A)
    site.start_agent(env)
    log = site.broker.log
    wait_for(lambda: f"Received SUBSCRIBE from {B}" in log.read_text(), "the agent's listener")
    at_a = Subscription(site, f"netroot/node/{A}/cmd", 1, client=f"{A}-2", cert=A)
    site.pub(f"netroot/node/{B}/cmd", json.dumps({"command": "report", "id": "for-b"}),
             user="netroot-controller")  # fmt: skip
    site.pub(f"netroot/node/{A}/cmd", "for A", user="netroot-controller")
    assert at_a.lines() == [f"netroot/node/{A}/cmd for A"]
    assert "for-b" not in Path(env["NETROOT_CONSOLE"]).with_name("agent.out").read_text()


def test_a_node_writes_no_event_state_status_or_command(site: Site) -> None:
    monitor = Subscription(site, "netroot/#", 1, client="mon", user="netroot-monitor")
    at_b = Subscription(site, f"netroot/node/{B}/cmd", 1, client=B, cert=B)
    for topic in ("netroot/events/image/demo", "netroot/state/image/demo",
                  "netroot/controller/status", f"netroot/node/{B}/cmd"):  # fmt: skip
        site.node_pub(topic, "forged by A", cert=A)
        site.node_pub(topic, "forged by A as the controller", cert=A, user="netroot-controller")
    site.pub(f"netroot/node/{B}/cmd", "real", user="netroot-controller")
    site.pub("netroot/events/image/demo", "real", user="netroot-controller")
    assert monitor.lines() == ["netroot/events/image/demo real"]
    assert at_b.lines() == [f"netroot/node/{B}/cmd real"]


def test_the_monitor_reads_events_states_and_reports_and_writes_nothing(site: Site) -> None:
    monitor = Subscription(site, "netroot/#", 4, client="mon", user="netroot-monitor")
    site.pub("netroot/events/image/demo", "from the monitor", user="netroot-monitor")
    site.pub("netroot/state/image/demo", "from the monitor", user="netroot-monitor")
    site.pub(f"netroot/node/{A}/cmd", "from the monitor", user="netroot-monitor")
    site.pub("netroot/controller/status", "online", user="netroot-controller", retain=True)
    site.pub("netroot/events/image/demo", "event", user="netroot-controller")
    site.pub("netroot/state/image/demo", "state", user="netroot-controller", retain=True)
    assert site.agent("report", site.node_env("a", mac=A, cert=A)).returncode == 0
    lines = monitor.lines()
    assert lines[:3] == ["netroot/controller/status online", "netroot/events/image/demo event",
                         "netroot/state/image/demo state"]  # fmt: skip
    assert reports(lines[3:]) == [(f"netroot/node/{A}/report", "boot", A)]


def test_no_client_is_the_controller_without_its_secret(site: Site) -> None:
    def pub(port: int, *opts: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), *opts, "-q", "1",
             "-t", f"netroot/node/{A}/cmd", "-m", json.dumps({"command": "reboot"})],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip

    at_a = Subscription(site, f"netroot/node/{A}/cmd", 1, client=A, cert=A)
    admin, nodes = site.admin_port, site.node_port
    refused = [
        pub(admin, "-u", "netroot-controller"),  # no password
        pub(admin, "-u", "netroot-controller", "-P", "guess"),
        pub(admin),  # anonymous
        pub(nodes, "-u", "netroot-controller"),  # no TLS at all
        pub(nodes, *site.tls(None), "-u", "netroot-controller", "-P", "guess"),  # no certificate
        pub(nodes, *site.tls("rogue")),  # CN netroot-controller, another CA
    ]
    assert all(r.returncode != 0 for r in refused), [r.stderr for r in refused]
    # Accepted but powerless: a node's certificate with the controller's username.
    assert pub(nodes, *site.tls(B), "-u", "netroot-controller").returncode == 0
    site.pub(f"netroot/node/{A}/cmd", "real", user="netroot-controller")
    assert at_a.lines() == [f"netroot/node/{A}/cmd real"]


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
                          user="netroot-monitor")  # fmt: skip
    controller = Controller(ws).start()
    try:
        (line,) = status.lines()
        assert json.loads(line.split(" ", 1)[1])["data"]["status"] == "online"
        # The agent's report through the node listener reaches the daemon's subscription
        # (for a version that exists: reports naming others are refused).
        env = site.node_env("a", mac=A, cert=A, version=str(ws.active()))
        assert site.agent("report", env).returncode == 0
        wait_for(lambda: [n for n in ws.json("nodes") if n["mac"] == A], "the node stored")
    finally:
        controller.cleanup()


# --- the broker `netroot up` starts --------------------------------------------------


def up_broker(tmp_path: Path, *, credentials: bool) -> Broker:
    """mosquitto with the files `netroot up` writes, on a free loopback port."""
    port = free_port()
    secret = tmp_path / "mqtt.password"
    secret.write_text(SECRET["netroot-controller"] + "\n")
    auth = {"username": "netroot-controller", "password_file": secret} if credentials else {}
    mqtt = MqttConfig(host="127.0.0.1", port=port, **auth)
    run_dir = tmp_path / "up"
    run_dir.mkdir()
    conf = upbroker.write_broker_files(mqtt, run_dir)
    # The test broker says `user root` (as root) and where to log itself.
    text = conf.read_text().replace("user root\n", "")
    assert ("password_file" in text) is credentials
    for private in run_dir.glob("mosquitto.*"):
        if private.suffix != ".conf":
            assert private.stat().st_mode & 0o077 == 0, private
            assert SECRET["netroot-controller"] not in private.read_text()
    return Broker(tmp_path / "broker", port=port, config_text=text).start()


def test_the_up_broker_takes_the_controller_username_only_with_its_password(
    tmp_path: Path,
) -> None:
    broker = up_broker(tmp_path, credentials=True)
    try:
        port = str(broker.port)

        def pub(*opts: str, topic: str = "netroot/events/image/demo") -> int:
            argv = ["mosquitto_pub", "-h", "127.0.0.1", "-p", port, *opts, "-q", "1",
                    "-t", topic, "-m", "x"]  # fmt: skip
            return subprocess.run(argv, capture_output=True, check=False, timeout=30).returncode

        ctl = ["-u", "netroot-controller", "-P", SECRET["netroot-controller"]]
        sub = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", port, *ctl, "-i", "ctl", "-q", "1",
             "-t", "netroot/#", "-C", "2", "-W", "60", "-F", "%t %p"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for(lambda: "Received SUBSCRIBE from ctl" in broker.log.read_text(), "subscribed")
        assert pub("-u", "netroot-controller") != 0  # no password
        assert pub("-u", "netroot-controller", "-P", "guess") != 0
        # Anonymous (a node agent): its reports pass, an event or a command does not.
        assert pub() == 0
        assert pub(topic=f"netroot/node/{B}/cmd") == 0
        assert pub(topic=f"netroot/node/{A}/report") == 0
        assert pub(*ctl) == 0
        out, _ = sub.communicate(timeout=90)
        assert out.splitlines() == [f"netroot/node/{A}/report x", "netroot/events/image/demo x"]
    finally:
        broker.stop()


def test_the_up_broker_without_credentials_stays_simple(tmp_path: Path) -> None:
    broker = up_broker(tmp_path, credentials=False)
    broker.stop()
    text = (tmp_path / "up" / "mosquitto.conf").read_text()
    assert "listener " + str(broker.port) + " 127.0.0.1\n" in text
    assert not (tmp_path / "up" / "mosquitto.passwd").exists()


def test_the_up_broker_listens_on_loopback_only(tmp_path: Path) -> None:
    mqtt = MqttConfig(host="10.0.2.2", port=free_port())
    with pytest.raises(NetrootError, match="loopback only"):
        upbroker.write_broker_files(mqtt, tmp_path)
    assert not (tmp_path / "mosquitto.conf").exists()
