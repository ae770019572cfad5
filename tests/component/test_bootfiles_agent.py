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
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO, Mosquitto

from controller.config.load import load_config
from controller.daemon.db import Database, db_path
from controller.events.node_events import NodeState
from controller.events.node_messages import (
    MAX_REPORT_BYTES,
    NodeCommand,
    NodeReport,
    parse_node_message,
)

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


def test_a_command_sent_the_moment_the_boot_report_arrives_is_obeyed(
    node: dict[str, str], broker: Mosquitto, tmp_path: Path
) -> None:
    """The controller answers a boot report at once (a stale node's reboot, a
    canary's health check). On a slow node the command listener may take
    seconds to start: here its mosquitto_sub starts 3 s late, and the report
    must still come only once the agent can hear the answer."""
    slow = tmp_path / "slowbin"
    slow.mkdir()
    real = shutil.which("mosquitto_sub")
    assert real is not None
    (slow / "mosquitto_sub").write_text(f'#!/bin/sh\nsleep 3\nexec {real} "$@"\n')
    (slow / "mosquitto_sub").chmod(0o755)
    node = {**node, "PATH": f"{slow}:{node['PATH']}"}
    sub = Subscriber(broker, f"netroot/node/{MAC}/report")
    agent = subprocess.Popen(["sh", str(AGENT), "run"], env=node, stdout=subprocess.DEVNULL,
                             start_new_session=True)  # fmt: skip
    try:
        sub.reports("boot", 1)
        publish(broker.port, f"netroot/node/{MAC}/cmd", {"command": "report", "id": "at-once"})
        assert len(sub.reports("boot", 2)) == 2
    finally:
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait(10)
        sub.close()


# --- issue 10: drift (the diff command) and boot timings -----------------------


@pytest.fixture
def overlay(tmp_path: Path, node: dict[str, str]) -> Iterator[Path]:
    """A real overlayfs: image (lower), writable layer (upper), the node's view (merged)."""
    lower, upper, work, merged = (tmp_path / d for d in ("image", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        d.mkdir()
    (lower / "etc/sub").mkdir(parents=True)
    (lower / "etc/motd").write_text("the image's motd\n")
    (lower / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (lower / "etc/sub/old").write_text("hidden once sub is made again\n")
    (lower / "root").mkdir()
    (lower / "gone").mkdir()
    (lower / "gone/f").write_text("f")
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    done = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount an overlay here: {done.stderr.strip()}")
    node.update(
        NETROOT_LOWER=str(lower), NETROOT_UPPER=str(upper), NETROOT_OVERLAY_ROOT=str(merged)
    )
    try:
        yield merged
    finally:
        subprocess.run(["umount", str(merged)], check=True, timeout=60)


def agent_diff(node: dict[str, str], command_id: str = "d-1") -> NodeReport:
    out = subprocess.run(["sh", str(AGENT), "diff", command_id], env=node, capture_output=True,
                         check=True, timeout=120)  # fmt: skip
    assert len(out.stdout) <= MAX_REPORT_BYTES
    report = parse_node_message(f"netroot/node/{MAC}/report", out.stdout.rstrip(b"\n"))
    assert report.kind == "diff_result" and report.command_id == command_id
    return report


def test_diff_lists_what_the_node_changed_against_the_image(
    node: dict[str, str], overlay: Path
) -> None:
    (overlay / "root/drift.txt").write_text("x\n")
    (overlay / "etc/motd").unlink()
    (overlay / "etc/hosts").write_text("127.0.0.1 localhost node1\n")  # copied up
    shutil.rmtree(overlay / "etc/sub")
    (overlay / "etc/sub").mkdir()  # made again: opaque, the image's entries hidden
    shutil.rmtree(overlay / "gone")
    (overlay / "new").mkdir()
    (overlay / "new/link").symlink_to("/etc/hosts")
    odd = ["a b", 'quote"d', "back\\slash", "new\nline", "tab\there", "ünïcødé", "日本"]
    for name in odd:
        (overlay / "root" / name).write_text(name)
    (overlay / "root").joinpath(os.fsdecode(b"latin1-\xe9")).write_bytes(b"1")

    report = agent_diff(node)
    assert report.diff is not None
    got = {e.path: (e.change, e.type, e.size) for e in report.diff.entries}
    expected = {
        "/root/drift.txt": ("added", "file", 2),
        "/etc/motd": ("deleted", "file", len("the image's motd\n")),
        "/etc/hosts": ("modified", "file", len("127.0.0.1 localhost node1\n")),
        "/etc/sub": ("modified", "dir", (overlay / "etc/sub").stat().st_size),
        "/gone": ("deleted", "dir", (overlay.parent / "image/gone").stat().st_size),
        "/new": ("added", "dir", (overlay / "new").stat().st_size),
        "/new/link": ("added", "symlink", len("/etc/hosts")),
        # a name that is not UTF-8 keeps its place, its odd byte shown as U+FFFD
        "/root/latin1-\ufffd": ("added", "file", 1),
        **{f"/root/{name}": ("added", "file", len(name.encode())) for name in odd},
    }
    # /etc and /root are in the layer only for what changed inside: not listed
    assert got == expected
    assert [e.path for e in report.diff.entries] == sorted(got, key=os.fsencode)
    assert (report.diff.added, report.diff.modified, report.diff.deleted) == (11, 2, 2)
    assert report.diff.truncated is False
    assert (report.label, report.version) == ("debian12", VERSION)


def test_an_untouched_node_has_no_drift(node: dict[str, str], overlay: Path) -> None:
    report = agent_diff(node)
    assert report.diff is not None
    assert (report.diff.entries, report.diff.total, report.diff.truncated) == ((), 0, False)


@pytest.mark.parametrize(("count", "length"), [(300, 8), (60, 200)])
def test_diff_is_bounded_and_counts_what_it_leaves_out(
    node: dict[str, str], overlay: Path, count: int, length: int
) -> None:
    for i in range(count):
        (overlay / "root" / f"{i:04d}".ljust(length, "x")).write_text("y")
    report = agent_diff(node)
    assert report.diff is not None
    assert report.diff.added == count and report.diff.truncated is True
    listed = [e.path for e in report.diff.entries]
    assert 0 < len(listed) <= 200
    # the first by path: the listing is a prefix of the sorted changes
    assert listed == [f"/root/{i:04d}".ljust(6 + length, "x") for i in range(len(listed))]


def fake_tools(tmp_path: Path, node: dict[str, str], analyze: str) -> Path:
    """systemd-analyze printing `analyze`, and a systemctl whose boot ends when a flag exists."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "analyze.out").write_text(analyze)
    script = f'#!/bin/sh\n[ "$1" = time ] || exit 1\ncat "{bin_dir}/analyze.out"\n'
    if not analyze.startswith("Startup"):
        script += "exit 1\n"  # as systemd-analyze does while the boot runs
    (bin_dir / "systemd-analyze").write_text(script)
    flag = tmp_path / "boot-finished"
    (bin_dir / "systemctl").write_text(
        f'#!/bin/sh\n[ "$1" = is-system-running ] || exit 1\n'
        f'while [ ! -e "{flag}" ]; do sleep 0.1; done\necho running\n'
    )
    for tool in ("systemd-analyze", "systemctl"):
        (bin_dir / tool).chmod(0o755)
    node["PATH"] = f"{bin_dir}:{node['PATH']}"
    return flag


@pytest.mark.parametrize(
    ("printed", "expected"),
    [
        (
            "Startup finished in 1.234s (kernel) + 3.456s (initrd) + 20.100s (userspace)"
            " = 24.790s \ngraphical.target reached after 20.0s in userspace.\n",
            {"kernel_s": 1.234, "initrd_s": 3.456, "userspace_s": 20.1, "total_s": 24.79},
        ),
        (  # UEFI: firmware and loader; minutes and milliseconds
            "Startup finished in 5.1s (firmware) + 812ms (loader) + 2.5s (kernel)"
            " + 1min 2.5s (userspace) = 1min 10.912s\n",
            {
                "firmware_s": 5.1,
                "loader_s": 0.812,
                "kernel_s": 2.5,
                "userspace_s": 62.5,
                "total_s": 70.912,
            },
        ),
        (  # no initramfs; a whole number of seconds; hours
            "Startup finished in 900ms (kernel) + 1h 2min 3s (userspace) = 1h 2min 3.900s\n",
            {"kernel_s": 0.9, "userspace_s": 3723.0, "total_s": 3723.9},
        ),
        ("Bootup is not yet finished (org.freedesktop.systemd1.Manager...=0).\n", None),
        ("Startup finished in 543ms (userspace)\n", None),  # a container: no kernel phase
        ("Startup finished in 1.2s (kernel) + 2fortnights (userspace) = 3s\n", None),
        ("Startup finished in 1.2s (kernel) + 2d (userspace) = 2d 1.200s\n", None),  # > a day
        ("", None),
    ],
)
def test_boot_timing_is_read_from_systemd_analyze(
    tmp_path: Path, node: dict[str, str], printed: str, expected: dict[str, float] | None
) -> None:
    fake_tools(tmp_path, node, printed)
    out = subprocess.run(["sh", str(AGENT), "json"], env=node, capture_output=True, text=True,
                         check=True, timeout=30)  # fmt: skip
    timing = NodeReport.model_validate_json(out.stdout).boot_timing
    assert (timing.model_dump(exclude_none=True) if timing else None) == expected


def test_boot_report_is_not_delayed_and_the_timing_report_follows(
    tmp_path: Path, node: dict[str, str], broker: Mosquitto
) -> None:
    flag = fake_tools(
        tmp_path, node, "Startup finished in 2s (kernel) + 3s (initrd) + 4s (userspace) = 9s\n"
    )
    sub = Subscriber(broker, f"netroot/node/{MAC}/report")
    agent = subprocess.Popen(["sh", str(AGENT), "run"], env=node, stdout=subprocess.DEVNULL,
                             start_new_session=True)  # fmt: skip
    try:
        boot = sub.reports("boot", 1)[0]
        assert boot.boot_timing is None  # sent at once, while the boot still runs
        assert sub.reports("heartbeat", 1)  # the agent goes on while the boot runs
        assert not [line for line in sub.lines if '"kind":"timing"' in line]
        flag.touch()  # systemctl is-system-running --wait returns: the boot is over
        timed = sub.reports("timing", 1)[0]
        assert timed.boot_id == boot.boot_id and timed.boot_timing is not None
        assert timed.boot_timing.model_dump(exclude_none=True) == {
            "kernel_s": 2, "initrd_s": 3, "userspace_s": 4, "total_s": 9
        }  # fmt: skip
        # asked again later, the boot report carries the timings itself
        broker.wait_subscribed(MAC, f"netroot/node/{MAC}/cmd")
        publish(broker.port, f"netroot/node/{MAC}/cmd", {"command": "report", "id": "r1"})
        assert sub.reports("boot", 2)[1].boot_timing == timed.boot_timing
    finally:
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait(10)
        sub.close()


def cli_config(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "netroot.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n\n[mqtt]\nhost = "127.0.0.1"\n'
                      f"port = {port}\n")  # fmt: skip
    return config


def store_node(config: Path, state: NodeState) -> None:
    path = db_path(load_config(config))
    path.parent.mkdir(parents=True, exist_ok=True)
    with Database(path) as db, db.transaction() as tx:
        tx.put_node(state)


def netroot(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller", "--config", str(config), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


def test_node_diff_asks_the_running_agent_and_prints_its_answer(
    tmp_path: Path, node: dict[str, str], broker: Mosquitto, overlay: Path
) -> None:
    config = cli_config(tmp_path, broker.port)
    assert netroot(config, "node", "diff", MAC).stderr == (
        f"netroot: error: node {MAC} is unknown: no agent of that MAC has reported\n"
    )
    store_node(config, NodeState(mac=MAC, state="lost", label="debian12", version=VERSION))
    assert netroot(config, "node", "diff", MAC.upper()).stderr == (
        f"netroot: error: node {MAC} is lost, not up: only a running agent answers\n"
    )
    store_node(config, NodeState(mac=MAC, state="up", label="debian12", version=VERSION))
    silent = netroot(config, "node", "diff", MAC, "--timeout", "1")
    assert (silent.returncode, silent.stderr) == (
        1, f"netroot: error: node {MAC} did not answer within 1 s\n"
    )  # fmt: skip

    (overlay / "root/drift.txt").write_text("x\n")
    (overlay / "etc/motd").unlink()
    (overlay / "root/new\nline").write_text("")
    agent = subprocess.Popen(["sh", str(AGENT), "run"], env=node, stdout=subprocess.DEVNULL,
                             start_new_session=True)  # fmt: skip
    try:
        broker.wait_subscribed(MAC, f"netroot/node/{MAC}/cmd")
        as_json = netroot(config, "--json", "node", "diff", MAC)
        shown = netroot(config, "node", "diff", MAC)
    finally:
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait(10)
    assert as_json.returncode == 0, as_json.stderr
    drift = json.loads(as_json.stdout)
    assert drift["entries"] == [
        {"change": "deleted", "type": "file", "size": 17, "path": "/etc/motd"},
        {"change": "added", "type": "file", "size": 2, "path": "/root/drift.txt"},
        {"change": "added", "type": "file", "size": 0, "path": "/root/new\nline"},
    ]
    assert (drift["mac"], drift["label"], drift["added"], drift["deleted"]) == (
        MAC,
        "debian12",
        2,
        1,
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["CHANGE", "TYPE", "SIZE", "PATH"]
    assert lines[1].split() == ["deleted", "file", "17", "B", "/etc/motd"]
    assert lines[3].endswith("/root/new\\nline")  # a control character shown escaped
    assert lines[4].startswith(f"3 changes against debian12 {VERSION}: 2 added, 0 modified")


def agent_health(node: dict[str, str], command_id: str = "h-1") -> NodeReport:
    env = {**node, "NETROOT_HEALTH_TIMEOUT": "5"}
    out = subprocess.run(["sh", str(AGENT), "health", command_id], env=env, capture_output=True,
                         check=True, timeout=120)  # fmt: skip
    report = parse_node_message(f"netroot/node/{MAC}/report", out.stdout.rstrip(b"\n"))
    assert report.kind == "health_result" and report.command_id == command_id
    return report


def test_health_runs_the_check_baked_into_the_image_and_reports_its_tail(
    node: dict[str, str], tmp_path: Path
) -> None:
    health = tmp_path / "root/etc/netroot/health"
    # What the build writes from the label's `health`: one line for sh -c.
    health.write_text('echo "$((20 + 1)) units"; echo "ünïcødé \\"quoted\\""; exit 3\n')
    report = agent_health(node)
    assert report.exit_code == 3
    assert report.version == VERSION
    assert report.output.startswith("21 units ")
    assert '"quoted"' in report.output

    health.write_text("seq 1 5000\n")  # long output: only its tail travels
    report = agent_health(node)
    assert report.exit_code == 0
    assert report.output.endswith("4999 5000")
    assert len(report.output) <= 900


def test_health_without_a_baked_check_fails_and_the_message_cannot_name_one(
    node: dict[str, str],
) -> None:
    report = agent_health(node)
    assert report.exit_code == 127
    assert "etc/netroot/health" in report.output
    # The command message has no field that could carry a command line.
    with pytest.raises(ValueError, match="run"):
        NodeCommand.model_validate({"command": "health", "id": "x", "run": "rm -rf /"})
