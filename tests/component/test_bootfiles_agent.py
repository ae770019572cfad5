"""The node agent (base/usr/lib/netroot/agent) on this host against a real mosquitto.

The node's kernel command line, mount table, sysfs and root are fakes the
agent reads through NETROOT_* variables; mosquitto_pub/sub, ip, awk and sed
are the real ones. Reboot and remount are never sent here: they would act
on this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO, Mosquitto

from controller.events.node_messages import NodeReport, parse_node_message

AGENT = REPO / "base" / "usr" / "lib" / "netroot" / "agent"
MAC = "52:54:00:0a:0b:0c"
VERSION = "20260101T120000.000Z-1a2b3c4d"

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto") is None or shutil.which("mosquitto_sub") is None,
    reason="mosquitto and mosquitto-clients are installed by .ci/setup",
)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto.start(tmp_path)
    yield broker
    broker.stop()


@pytest.fixture
def node(tmp_path: Path, broker: Mosquitto) -> dict[str, str]:
    """A fake node: cmdline naming the broker, root over NFS under an overlay, its NIC."""
    (tmp_path / "root/etc/netroot").mkdir(parents=True)
    (tmp_path / "root/etc/netroot/version").write_text(f"{VERSION}\n")
    (tmp_path / "sys/class/net/lo").mkdir(parents=True)
    (tmp_path / "sys/class/net/lo/address").write_text(MAC.upper() + "\n")
    (tmp_path / "cmdline").write_text(
        f"BOOT_IMAGE=x root=nfs4:127.0.0.1:/debian12/{VERSION} ro rd.neednet=1 ip=dhcp rootovl"
        f" netroot.label=debian12 netroot.version=ignored netroot.mqtt=127.0.0.1:{broker.port}"
        " netroot.heartbeat=1\n"
    )
    (tmp_path / "mountinfo").write_text(
        "22 1 0:30 / / rw,relatime - overlay overlay rw,lowerdir=/live/image\n"
        f"23 22 0:31 / /live/image ro,relatime shared:1 - nfs4 10.0.2.100:/debian12/{VERSION}"
        " ro,vers=4.2\n"
    )
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "NETROOT_CMDLINE_FILE": str(tmp_path / "cmdline"),
        "NETROOT_MOUNTINFO": str(tmp_path / "mountinfo"),
        "NETROOT_ROOT": str(tmp_path / "root"),
        "NETROOT_SYS": str(tmp_path / "sys"),
        "NETROOT_CONSOLE": str(tmp_path / "console"),
    }


class Subscriber:
    """mosquitto_sub -v on a topic filter, lines collected as they come."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        client_id = f"test-sub-{uuid.uuid4().hex[:8]}"
        self.process = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-i", client_id,
             "-q", "1", "-t", topic, "-v"],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        broker.wait_subscribed(client_id, topic)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def reports(self, kind: str, count: int, within: float = 20) -> list[NodeReport]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            found = []
            for line in list(self.lines):
                topic, _, payload = line.partition(" ")
                report = parse_node_message(topic, payload.encode())
                if report.kind == kind:
                    found.append(report)
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(f"fewer than {count} {kind} reports: {self.lines}")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def publish(port: int, topic: str, payload: dict[str, str]) -> None:
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic,
         "-m", json.dumps(payload)],
        check=True, timeout=30,
    )  # fmt: skip


def test_report_json_matches_the_controller_model(node: dict[str, str]) -> None:
    out = subprocess.run(["sh", str(AGENT), "json"], env=node, capture_output=True, text=True,
                         check=True, timeout=30)  # fmt: skip
    report = NodeReport.model_validate_json(out.stdout)
    assert (report.kind, report.mac, report.label, report.version) == (
        "boot",
        MAC,
        "debian12",
        VERSION,
    )
    assert report.root is not None and report.root.fstype == "overlay"
    # the read-only NFS root under the tmpfs overlay, in root='s own notation
    assert report.root.lower == f"nfs4:10.0.2.100:/debian12/{VERSION}:ro"
    assert str(report.ip) == "127.0.0.1"
    assert report.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_agent_reports_answers_and_leaves_a_will(node: dict[str, str], broker: Mosquitto) -> None:
    sub = Subscriber(broker, f"netroot/node/{MAC}/report")
    agent = subprocess.Popen(["sh", str(AGENT), "run"], env=node, stdout=subprocess.PIPE,
                             text=True, start_new_session=True)  # fmt: skip
    try:
        boot = sub.reports("boot", 1)[0]
        assert (boot.label, boot.version, boot.mac) == ("debian12", VERSION, MAC)
        assert sub.reports("heartbeat", 1)[0].stale_handle is False
        cmd = f"netroot/node/{MAC}/cmd"
        broker.wait_subscribed(MAC, cmd)  # the agent subscribes to it after reporting
        publish(broker.port, cmd, {"command": "report", "id": "c1"})
        assert len(sub.reports("boot", 2)) == 2
        # not meant for this boot, or not a command it runs: ignored
        publish(
            broker.port,
            cmd,
            {"command": "reboot", "id": "c2", "boot_id": "00000000-0000-0000-0000-000000000000"},
        )
        publish(broker.port, cmd, {"command": "rm -rf /", "id": "c3"})
        # a command that changes the node must name this boot (harmless here if obeyed)
        publish(broker.port, cmd, {"command": "remount", "id": "c5"})
        publish(broker.port, cmd, {"command": "report", "id": "c4"})
        assert len(sub.reports("boot", 3)) == 3
        # the agent dies without a goodbye: the broker publishes its will
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait(10)
        offline = sub.reports("offline", 1, within=60)[0]
        assert offline.mac == MAC and offline.boot_id == boot.boot_id
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait(10)
        sub.close()
        output = agent.stdout.read() if agent.stdout else ""
        if agent.stdout:
            agent.stdout.close()
    assert "boot report published: label debian12" in output
    # the same line on the console, where `netroot boot` looks for it
    console = Path(node["NETROOT_CONSOLE"]).read_text()
    assert f"netroot-agent: boot report published: label debian12 version {VERSION}" in console
    assert "ignoring command c2: meant for boot" in output
    assert "ignoring unknown command c3" in output
    assert "ignoring remount c5: it names no boot id" in output
