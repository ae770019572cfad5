"""Seconds from a build on the primary to a replica's acknowledgement, against rsync.

Two boot servers on this machine's loopback: a primary (`netroot serve`, its
[http] API on a free port) and a replica (`netroot serve --role replica`),
each with its own state directory under --root and its own mosquitto, the
replica's bridged to the primary's with the shipped
config/mosquitto-replica.conf.example (address changed, TLS and credential
lines dropped, as tests/integration/test_replica.py does). A paho subscriber
on the primary's broker records every envelope with its arrival time.

Cases, in this order:
  (c) first copy: the replica starts with an empty store and catches up with
      the primary's active version; from the replica's process start to its
      `image.replicated` arriving on the primary's broker, with the CPU seconds
      both daemons used meanwhile (which side bounds the copy).
  (a) overlay: one file under the primary's overlays_dir/common changes; the
      primary's daemon builds an overlay version; from that build's
      `image.build.succeeded` (the envelope's `time`: when the build was
      done) to the acknowledgement arriving (the subscriber's clock: the same
      machine's). With activation = auto, the primary's activation follows
      the acknowledgement (replicas_required, --replicas-required).
  (b) full: `netroot build <label> --rebuild --force` on the primary (a real
      mmdebstrap run: minutes; `--cases c,a` skips it), timed as (a), then
      activated by hand (which replicas_required allows only once acked).

Baselines, measured in the same run right after each acknowledgement (the
version's files are in the page cache for both): `rsync -aH` of the
version's directory into an empty directory on the same filesystem, and for
(a) and (b) `rsync -aH --link-dest=<the version before>`, which links
unchanged files as the replica does (it compares contents, rsync size and
mtime). rsync does not flush; the replica syncs its staged copy before the
rename (`sync -f` after rsync is printed apart). Prints figures and ratios,
asserts nothing; run it under `flock /tmp/netroot-heavy.lock`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from common import REPO, Workspace
from integration.harness import Broker, Controller, free_port, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from controller.daemon.replication import CATCH_UP

BUILD_TIMEOUT_S = 3600.0
REPLICA = "rbench2"


@dataclass(frozen=True)
class Arrival:
    """One envelope the primary's broker delivered, with the subscriber's clock."""

    at: float  # time.time() at arrival
    topic: str
    envelope: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.envelope.get("type", "")).removeprefix("org.netroot.")

    @property
    def data(self) -> dict[str, Any]:
        data = self.envelope.get("data")
        return data if isinstance(data, dict) else {}

    @property
    def sent(self) -> float:
        """The envelope's `time` attribute, as seconds since the epoch."""
        return datetime.fromisoformat(str(self.envelope["time"])).timestamp()


class Timeline:
    """Every netroot envelope on a broker, first delivery of each id, in arrival order."""

    def __init__(self, port: int) -> None:
        self.arrivals: list[Arrival] = []
        self._ids: set[str] = set()
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-replica-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_connect = lambda client, *_: client.subscribe("netroot/#", qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not subscribed.wait(20):
            sys.exit("bench: cannot subscribe to the primary's broker")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        at = time.time()
        try:
            envelope = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(envelope, dict) or "type" not in envelope or "time" not in envelope:
            return
        with self._lock:
            if envelope.get("id") in self._ids:
                return
            self._ids.add(str(envelope.get("id")))
            self.arrivals.append(Arrival(at, msg.topic, envelope))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def find(self, event: str, after: float = 0.0, **data: Any) -> list[Arrival]:
        """Arrivals of one event type (after org.netroot.) since `after`, data matching."""
        with self._lock:
            found = list(self.arrivals)
        return [
            a
            for a in found
            if a.kind == event
            and a.at >= after
            and all(a.data.get(k) == v for k, v in data.items())
        ]

    def wait(
        self, event: str, what: str, after: float = 0.0, timeout: float = 600, **data: Any
    ) -> Arrival:
        """The first arrival of event since `after` matching data, waiting for it."""
        return wait_for(lambda: next(iter(self.find(event, after, **data)), None), what, timeout)


def shipped_bridge(primary_port: int) -> str:
    """config/mosquitto-replica.conf.example pointed at the primary's loopback broker."""
    text = (REPO / "config" / "mosquitto-replica.conf.example").read_text()
    text = re.sub(r"(?m)^address .*$", f"address 127.0.0.1:{primary_port}", text)
    return re.sub(r"(?m)^(remote_username|remote_password|bridge_cafile) .*$", "", text)


def write_config(ws: Workspace, label: str, body: str) -> None:
    """A config like the built-in defaults (the repo's recipes/ and base/), state under ws."""
    ws.root.mkdir(parents=True, exist_ok=True)
    ws.config.write_text(
        f'state_dir = "state"\nrecipes_dir = "{REPO / "recipes"}"\n'
        f'base_dir = "{REPO / "base"}"\noverlays_dir = "overlays"\n'
        f'export_root = "export"\ntftp_root = "tftp"\nserver = "127.0.0.1"\n{body}\n'
        f'[labels.{label}]\nrecipe = "{label}.toml"\nactivation = "auto"\n'
    )


def primary_body(mqtt_port: int, http_port: int, required: int) -> str:
    return (
        f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\n'
        f'[http]\nlisten = "127.0.0.1:{http_port}"\n'
        f'[replication]\nname = "rbench1"\nreplicas_required = {required}\n'
    )


def replica_body(mqtt_port: int, http_port: int) -> str:
    return (
        f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\n[http]\nlisten = ""\n'
        f'[replication]\nname = "{REPLICA}"\nprimary_url = "http://127.0.0.1:{http_port}"\n'
        "retry_interval = 5\n"
    )


def netroot(ws: Workspace, *args: str, timeout: float = 300) -> str:
    """Run the CLI of this checkout against ws; its stdout. Exits naming the failure."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        ws.argv(*args),
        capture_output=True,
        text=True,
        env=env,
        cwd=ws.root,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"bench: netroot {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def versions(ws: Workspace, label: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(netroot(ws, "--json", "versions", label))
    return rows


def cpu_seconds(ctl: Controller) -> float:
    """CPU seconds (user + system) a controller process used so far, its children not."""
    fields = Path(f"/proc/{ctl.pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass
class Case:
    """One measured case, as printed."""

    name: str
    version: str
    ack: dict[str, Any]
    latency: float  # the case's start to the ack's arrival on the primary's broker
    load: str
    rsync: float = 0.0
    sync: float = 0.0
    link_dest: float | None = None
    note: str = ""


def rsync_baseline(src: Path, scratch: Path, link_dest: Path | None) -> tuple[float, float]:
    """Seconds of `rsync -aH` src into an empty directory, then of `sync -f` there."""
    dest = scratch / "rsync-copy"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    argv = ["rsync", "-aH"]
    if link_dest is not None:
        argv.append(f"--link-dest={link_dest}")
    t0 = time.perf_counter()
    subprocess.run([*argv, f"{src}/", f"{dest}/"], check=True)
    copied = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run(["sync", "-f", str(dest)], check=True)
    synced = time.perf_counter() - t0
    shutil.rmtree(dest)
    return copied, synced


def baselines(case: Case, images: Path, previous: str | None, scratch: Path) -> None:
    case.rsync, case.sync = rsync_baseline(images / case.version, scratch, None)
    if previous is not None:
        case.link_dest = rsync_baseline(images / case.version, scratch, images / previous)[0]


def catch_up_wanted(rows: list[dict[str, Any]]) -> set[str]:
    """The versions a replica's catch-up copies of these rows (replication.Follower)."""
    active = next((r["version"] for r in rows if r["active"]), None)
    ids = [str(r["version"]) for r in rows]
    wanted = {v for v in ids[-CATCH_UP:] if active is None or v >= active}
    return wanted | ({active} if active else set())


def print_table(cases: list[Case], header: str) -> None:
    print(header)
    cols = (
        f"{'case':<16}{'ack s':>8}{'copy s':>8}{'rsync s':>9}{'+sync s':>8}{'link-dest s':>12}"
        f"{'ack/rsync':>10}{'ack/l-d':>8}{'fetched':>9}{'MB':>9}{'linked':>8}  load"
    )
    print(cols)
    for c in cases:
        ld = f"{c.link_dest:12.2f}" if c.link_dest is not None else f"{'-':>12}"
        r_ld = f"{c.latency / c.link_dest:8.2f}" if c.link_dest else f"{'-':>8}"
        print(
            f"{c.name:<16}{c.latency:8.2f}{c.ack['duration_s']:8.2f}{c.rsync:9.2f}{c.sync:8.2f}"
            f"{ld}{c.latency / c.rsync:10.2f}{r_ld}{c.ack['fetched_files']:9d}"
            f"{c.ack['fetched_bytes'] / 1e6:9.1f}{c.ack['linked_files']:8d}  {c.load}"
        )
    for c in cases:
        print(f"  {c.name}: {c.version}" + (f"; {c.note}" if c.note else ""))


@dataclass
class Bench:
    """Both servers of one run, and what a case needs of them."""

    label: str
    primary: Workspace
    replica: Workspace
    timeline: Timeline
    scratch: Path
    required: int
    controllers: list[Controller]

    @property
    def images(self) -> Path:
        return self.primary.images()

    def active(self) -> str | None:
        return next((r["version"] for r in versions(self.primary, self.label) if r["active"]), None)

    def first_copy(self) -> Case:
        """(c): an empty replica starts and catches up; the first acknowledgement."""
        wanted = catch_up_wanted(versions(self.primary, self.label))
        ctl = Controller(self.replica, args=("--role", "replica"))
        self.controllers.append(ctl)
        primary_cpu = cpu_seconds(self.controllers[0])
        t0 = time.time()
        ctl.start()
        acks = [
            self.timeline.wait(
                "image.replicated", f"the first copy of {v}", version=v, replica=REPLICA
            )
            for v in sorted(wanted)
        ]
        first = min(acks, key=lambda a: a.at)
        used = cpu_seconds(self.controllers[0]) - primary_cpu, cpu_seconds(ctl)
        case = Case("(c) first copy", first.data["version"], first.data, first.at - t0, load())
        case.note = (
            f"CPU s from the replica's start to the last catch-up ack: the primary's daemon"
            f" {used[0]:.1f}, the replica's {used[1]:.1f} ({len(acks)} version(s) copied)"
        )
        baselines(case, self.images, None, self.scratch)
        return case

    def overlay(self) -> Case:
        """(a): one overlay file changes; the daemon builds, waits for the ack, activates."""
        before = self.active()
        motd = self.primary.overlays / "common" / "etc" / "motd"
        motd.parent.mkdir(parents=True, exist_ok=True)
        mark = time.time()
        motd.write_text(f"rbench {uuid.uuid4().hex}\n")
        built = self.timeline.wait(
            "image.build.succeeded",
            "the primary's overlay build",
            mark,
            label=self.label,
            kind="overlay",
        )
        version = built.data["version"]
        ack = self.timeline.wait("image.replicated", f"the ack of {version}", mark, version=version)
        case = Case("(a) overlay", version, ack.data, ack.at - built.sent, load())
        activated = self.timeline.wait(
            "image.activated",
            f"the primary activating {version}",
            mark,
            timeout=120,
            version=version,
        )
        baselines(case, self.images, before, self.scratch)
        order = "after" if activated.at >= ack.at else "BEFORE"
        case.note = (
            f"the primary activated it {activated.at - ack.at:+.2f} s {order} the ack arrived"
            f" (replicas_required = {self.required})"
        )
        return case

    def full(self) -> Case:
        """(b): a full rebuild by hand on the primary (mmdebstrap), then activated by hand."""
        previous = self.active()
        mark = time.time()
        netroot(self.primary, "build", self.label, "--rebuild", "--force", timeout=BUILD_TIMEOUT_S)
        built = self.timeline.wait(
            "image.build.succeeded",
            "the primary's full build",
            mark,
            timeout=60,
            label=self.label,
            kind="full",
        )
        version = built.data["version"]
        ack = self.timeline.wait("image.replicated", f"the ack of {version}", mark, version=version)
        case = Case("(b) full rebuild", version, ack.data, ack.at - built.sent, load())
        baselines(case, self.images, previous, self.scratch)
        netroot(self.primary, "activate", self.label, version)
        case.note = f"activated by hand on the primary after the ack (was {previous})"
        return case


def setup(
    root: Path, label: str, p_port: int, r_port: int, required: int
) -> tuple[Workspace, Workspace]:
    """Both configs; a version on the primary, active (built once, kept in root: not
    measured); the replica's state emptied, so that (c) is a first copy."""
    primary = Workspace(root / "primary", label=label)
    replica = Workspace(root / "replica", label=label)
    http_port = free_port()
    write_config(primary, label, primary_body(p_port, http_port, 0))
    if not any(r["active"] for r in versions(primary, label)):
        print(f"setup: building {label} on the primary (not measured)", file=sys.stderr)
        netroot(primary, "build", label, "--activate", timeout=BUILD_TIMEOUT_S)
    write_config(primary, label, primary_body(p_port, http_port, required))
    shutil.rmtree(replica.root, ignore_errors=True)
    write_config(replica, label, replica_body(r_port, http_port))
    return primary, replica


def main() -> None:
    """Set up both servers, run the cases, print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/var/tmp/rbench"),
        help="both servers' state (the primary's is kept between runs)",
    )
    parser.add_argument("--label", default="debian12")
    parser.add_argument(
        "--replicas-required",
        type=int,
        default=1,
        help="the primary's [replication] replicas_required",
    )
    parser.add_argument(
        "--cases",
        default="c,a,b",
        help="which cases, in this order (default c,a,b; b is the mmdebstrap rebuild; c always"
        " runs, since the replica starts with it)",
    )
    args = parser.parse_args()
    root: Path = args.root.resolve()
    p_broker = Broker(root / "p-broker").start()
    r_broker = Broker(root / "r-broker", extra=shipped_bridge(p_broker.port) + "\n")
    controllers: list[Controller] = []
    cases: list[Case] = []
    timeline: Timeline | None = None
    try:
        primary, replica = setup(
            root, args.label, p_broker.port, r_broker.port, args.replicas_required
        )
        timeline = Timeline(p_broker.port)
        r_broker.start()
        wait_for(
            lambda: "netroot-bridge-boot2" in p_broker.log.read_text(errors="replace"),
            "the replica broker's bridge on the primary's broker",
        )
        controllers.append(Controller(primary).start())
        scratch = root / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        bench = Bench(
            args.label, primary, replica, timeline, scratch, args.replicas_required, controllers
        )
        more = {"a": bench.overlay, "b": bench.full}
        steps = [bench.first_copy] + [more[c] for c in args.cases.split(",") if c in more]
        for step in steps:
            cases.append(step())
            print_table(cases[-1:], "")
    finally:
        if timeline is not None:
            timeline.close()
        for ctl in reversed(controllers):
            ctl.cleanup()
        r_broker.stop()
        p_broker.stop()
    print_table(cases, HEADER.format(label=args.label, cpus=os.cpu_count()))


HEADER = (
    "replica of {label} over loopback HTTP, {cpus} CPUs. ack s: from (c) the replica's start,"
    " (a)/(b) build.succeeded's `time`, to image.replicated arriving at a paho subscriber on"
    " the primary's broker; copy s: the ack's duration_s (fetch, hash, verify, sync, rename);"
    " ratios: ack s / the baseline's"
)


if __name__ == "__main__":
    main()
