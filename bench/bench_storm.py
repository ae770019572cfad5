"""Boot storm: K nodes reading their boot set from one NFS-Ganesha at once.

The boot set is what one real boot of the label reads from its NFS root
(bench/boot-set-LABEL.json, recorded by `--record`: see bench/bootset.py for
the method): files with the byte ranges read, symlinks followed, directories
listed, in first-access order. The replay serves the label's active version
from a ganesha.nfsd configured as netroot configures it (render_ganesha, one
export per version, loopback), and simulates each node as one libnfs NFSv4
client (bench/nfs_client.py): its own connection and client id, one mount,
then every entry of the set in order. For each K the storm starts K nodes
at the same instant; the baseline in the same run is one node at a time, K
times in a row. Printed per K: seconds until every node has read its set,
nodes served per minute, per-node p50/p99, Ganesha's CPU seconds, the
clients' CPU seconds and MB/s. A warm-up node runs first, untimed: the
figures are for a server whose page cache holds the image, as a boot
server's does after its first node.

What this measures and what it does not (printed at the end as well):
each node reads its set sequentially, one request in flight, where a kernel
client reads ahead and systemd starts units in parallel; metadata traffic is
a lower bound (only first accesses are recorded, not the GETATTRs and
failed LOOKUPs of a real boot), while the data per node is close to what a
node fetches. Clients and server share this machine's CPUs over loopback:
there is no network here, so the figure is the server's CPU limit, not a
wire's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bootset
from bench_boot import boot, free_port, to_toml
from common import REPO
from nfs_client import Client, NfsError

from controller.config.load import load_config
from controller.config.models import Config
from controller.render.exports import ExportSpec
from controller.render.ganesha import pseudo_path, render_ganesha
from controller.serve import nfs
from controller.store import versions as store
from controller.store.layout import label_paths

KS = (1, 10, 50, 100, 200)
Run = Callable[[], tuple[float, list[float], int]]  # -> (total s, per-node s, bytes read)
TICKS = os.sysconf("SC_CLK_TCK")


def set_file(label: str) -> Path:
    """Where the recorded boot set of a label lives."""
    return REPO / "bench" / f"boot-set-{label}.json"


def active_rootfs(config: Config, label: str) -> tuple[str, Path, Path]:
    """(version, real rootfs, boot files dir) of the label's active version."""
    paths = label_paths(config, label)
    version = store.active_version(paths)
    if version is None:
        raise SystemExit(f"label {label!r} has no active version: build and activate it first")
    return version, Path(os.path.realpath(paths.rootfs(version))), paths.boot(version)


# --- recording -------------------------------------------------------------------------


def record(config_path: Path | None, label: str) -> None:
    """Boot the label once over PXE and store what it read from its NFS root."""
    config = load_config(config_path)
    version, rootfs, boot_dir = active_rootfs(config, label)
    skip = bootset.inodes(boot_dir)
    print(f"resetting atimes and page cache under {rootfs} ...")
    reset = bootset.reset(rootfs, skip)
    with tempfile.TemporaryDirectory(prefix="netroot-storm-") as tmp:
        port = free_port()
        (Path(tmp) / "mosquitto.conf").write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        )
        broker = subprocess.Popen(["mosquitto", "-c", f"{tmp}/mosquitto.conf"],
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            time.sleep(0.5)
            data = config.model_dump(mode="json")
            data["mqtt"] = {**data["mqtt"], "enabled": True, "host": "127.0.0.1", "port": port}
            bench_config = Path(tmp) / "netroot.toml"
            bench_config.write_text(to_toml(data))
            print("booting one VM over PXE to the agent's report (TCG: minutes) ...")
            stop, others = threading.Event(), dict[int, str]()
            watcher = threading.Thread(target=bootset.other_readers, args=(rootfs, stop, others))
            watcher.start()
            started_ns = time.time_ns()
            try:
                milestones = boot(bench_config, label, "tftp")
            finally:
                stop.set()
                watcher.join()
        finally:
            broker.terminate()
            broker.wait(10)
    if "report" not in milestones or "kernel" not in milestones:
        raise SystemExit(f"the VM did not report (milestones seen: {sorted(milestones)})")
    # Nothing before the guest's kernel runs can be the guest's NFS traffic.
    since_ns = started_ns + int(milestones["kernel"] * 1e9)
    early = bootset.collect(rootfs, skip, bootset.OLD_ATIME_NS + 1)
    entries = [e for e in early if e["at_ns"] >= since_ns]
    for entry in entries:
        entry["at_s"] = round((entry.pop("at_ns") - started_ns) / 1e9, 3)
    print(f"read before the kernel started (not counted): {len(early) - len(entries)} entries;"
          f" other processes seen reading the tree: {others or 'none'}")  # fmt: skip
    recorded = {
        "label": label,
        "version": version,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "boot": "PXE, qemu TCG, until the agent's MQTT report",
        "milestones_s": milestones,
        "entry_at_s": "an entry's first access, seconds after `netroot boot` was started (qemu"
        " starts a few seconds later: milestones count from qemu's start)",
        "excluded_before_kernel": len(early) - len(entries),
        "other_readers": list(others.values()),
        "method": bootset.__doc__,
        "tree_entries": reset,
        "totals": bootset.totals(entries),
        "entries": entries,
    }
    set_file(label).write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"{set_file(label)}: {json.dumps(recorded['totals'])}")


# --- replay ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """One measured phase: K nodes, storm or sequential."""

    mode: str
    k: int
    total_s: float
    node_s: list[float]
    server_cpu_s: float
    client_cpu_s: float
    bytes_read: int
    machine_busy: float  # fraction of all CPUs busy during the phase

    @property
    def per_minute(self) -> float:
        return self.k / self.total_s * 60

    def pct(self, q: int) -> float:
        if len(self.node_s) == 1:
            return self.node_s[0]
        return statistics.quantiles(self.node_s, n=100, method="inclusive")[q - 1]


def replay_node(url: str, name: str, entries: list[dict[str, Any]], whole: bool) -> int:
    """One node: mount, then every entry of the boot set in order; bytes read."""
    total = 0
    with Client(url, name) as client:
        for entry in entries:
            if entry["kind"] == "file":
                ranges = [(0, entry["size"])] if whole else [tuple(r) for r in entry["ranges"]]
                total += client.read(entry["path"], ranges)
            elif entry["kind"] == "symlink":
                client.readlink(entry["path"])
            else:
                client.listdir(entry["path"])
    return total


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def _machine() -> tuple[int, int]:
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def _self_cpu() -> float:
    times = os.times()
    return times.user + times.system


def measure(mode: str, k: int, server_pid: int, run: Run) -> Phase:
    """Run `run()` -> (total seconds, per-node seconds, bytes) with CPU accounting around it."""
    server0, client0, (busy0, all0) = _cpu_ticks(server_pid), _self_cpu(), _machine()
    total_s, node_s, nbytes = run()
    busy1, all1 = _machine()
    return Phase(mode=mode, k=k, total_s=total_s, node_s=node_s,
                 server_cpu_s=(_cpu_ticks(server_pid) - server0) / TICKS,
                 client_cpu_s=_self_cpu() - client0, bytes_read=nbytes,
                 machine_busy=(busy1 - busy0) / max(1, all1 - all0))  # fmt: skip


def sequential(url: str, k: int, entries: list[dict[str, Any]], whole: bool) -> Run:
    """The baseline: one node after another, K times."""

    def run() -> tuple[float, list[float], int]:
        node_s, nbytes = [], 0
        start = time.perf_counter()
        for n in range(k):
            t0 = time.perf_counter()
            nbytes += replay_node(url, f"netroot-storm-seq-{k}-{n}", entries, whole)
            node_s.append(time.perf_counter() - t0)
        return time.perf_counter() - start, node_s, nbytes

    return run


def storm(url: str, k: int, entries: list[dict[str, Any]], whole: bool) -> Run:
    """K nodes released at the same instant; each node's time runs from the release."""

    def run() -> tuple[float, list[float], int]:
        gate = threading.Barrier(k + 1)
        done: list[float] = [0.0] * k
        nbytes: list[int] = [0] * k
        errors: list[BaseException] = []

        def node(n: int) -> None:
            gate.wait()
            try:
                nbytes[n] = replay_node(url, f"netroot-storm-{k}-{n}", entries, whole)
            except BaseException as exc:  # reported after the phase
                errors.append(exc)
            done[n] = time.perf_counter()

        threads = [threading.Thread(target=node, args=(n,), name=f"node-{n}") for n in range(k)]
        for thread in threads:
            thread.start()
        gate.wait()
        start = time.perf_counter()
        for thread in threads:
            thread.join()
        if errors:
            raise SystemExit(f"{len(errors)} of {k} nodes failed; first: {errors[0]}")
        node_s = [t - start for t in done]
        return max(node_s), node_s, sum(nbytes)

    return run


def start_ganesha(
    tmp: Path, label: str, version: str, rootfs: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """ganesha.nfsd as netroot renders it for a lab, exporting this version; (process, url)."""
    port = free_port()
    spec = ExportSpec(label=label, path=os.fspath(rootfs), version=version)
    conf = tmp / "ganesha.conf"
    conf.write_text(render_ganesha([spec], clients=["127.0.0.1/32"], insecure=True,
                                   bind_addr="127.0.0.1", port=port,
                                   recovery_root=os.fspath(tmp / "recovery")))  # fmt: skip
    argv = nfs.ganesha_argv(conf, tmp / "ganesha.log", tmp / "ganesha.pid")
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return server, f"nfs://127.0.0.1{pseudo_path(label, version)}?version=4&nfsport={port}"


def wait_mounted(url: str, server: subprocess.Popen[bytes]) -> None:
    """Until a client mounts (Ganesha takes a few seconds to serve)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            Client(url, "netroot-storm-probe").close()
        except NfsError as exc:
            error = exc
        else:
            return
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"ganesha.nfsd does not serve {url}: {error}")
        time.sleep(0.5)


def nfs_cat_overhead(url: str, entries: list[dict[str, Any]], runs: int = 20) -> float:
    """Seconds per `nfs-cat` of the set's smallest file: a process and a mount per file."""
    small = min((e for e in entries if e["kind"] == "file" and e["size"] > 0),
                key=lambda e: e["size"])  # fmt: skip
    base, _, query = url.partition("?")
    argv = ["nfs-cat", f"{base}{small['path']}?{query}"]
    t0 = time.perf_counter()
    for _ in range(runs):
        subprocess.run(argv, capture_output=True, check=True, timeout=60)
    return (time.perf_counter() - t0) / runs


# --- output ------------------------------------------------------------------------------

PROJECTION = """\
Projection (one run; this machine: {cpus} CPUs shared by Ganesha and all clients, loopback):
- Scales with K: bytes served (K x {set_mb:.1f} MB), Ganesha's CPU ({cpu_per_node:.3f} CPU s
  per node at K={kmax}: one server core can serve at most ~{core_per_min:,.0f} nodes/min of
  this set), connections and NFSv4 client state (one per node). A storm of K cannot end
  before K x (Ganesha CPU per node) / (cores Ganesha can use), nor before
  K x (set size) / (link rate).
- Limited by this machine, not by K: the clients' CPU ({cli_per_node:.3f} s per node) comes off
  the same {cpus} CPUs (busy {busy:.0%} at K={kmax}), and loopback has no wire. On a boot
  server with its own cores and clients on their own machines, a 10 Gbit/s link
  (~1,100 MB/s) carries ~{nic_per_min:,.0f} sets/min; whether Ganesha's CPU scales to
  many cores is not shown by a {cpus}-CPU run.
- Not in the figure: a real node spreads these reads over its boot (kernel, udev and
  systemd in between), so a rack powered on at once loads the server less than these
  back-to-back replays; its kernel and initramfs (a 47.6 MB initramfs per node over
  TFTP today) come on top; metadata (GETATTR, failed LOOKUPs) is a lower bound."""


def print_table(phases: list[Phase]) -> None:
    """The figures, one line per phase, then the storm/sequential ratios per K."""
    print(f"{'mode':<11}{'K':>5}{'total s':>9}{'nodes/min':>11}{'p50 s':>8}{'p99 s':>8}"
          f"{'max s':>8}{'srv CPU s':>10}{'cli CPU s':>10}{'MB/s':>8}{'busy':>6}")  # fmt: skip
    for p in phases:
        print(f"{p.mode:<11}{p.k:>5}{p.total_s:>9.2f}{p.per_minute:>11,.0f}{p.pct(50):>8.3f}"
              f"{p.pct(99):>8.3f}{max(p.node_s):>8.3f}{p.server_cpu_s:>10.2f}"
              f"{p.client_cpu_s:>10.2f}{p.bytes_read / p.total_s / 1e6:>8.0f}"
              f"{p.machine_busy:>6.0%}")  # fmt: skip
    print()
    print("storm vs sequential baseline (same K, same run):")
    print(f"{'K':>5}{'nodes/min storm':>17}{'sequential':>12}{'ratio':>7}"
          f"{'p99 storm / p50 alone':>23}")  # fmt: skip
    by = {(p.mode, p.k): p for p in phases}
    for k in sorted({p.k for p in phases}):
        s, q = by.get(("storm", k)), by.get(("sequential", k))
        if s is None or q is None:
            continue
        print(f"{k:>5}{s.per_minute:>17,.0f}{q.per_minute:>12,.0f}"
              f"{s.per_minute / q.per_minute:>7.2f}{s.pct(99) / q.pct(50):>23.2f}")  # fmt: skip


def replay(
    args: argparse.Namespace, recorded: dict[str, Any], version: str, rootfs: Path
) -> list[Phase]:
    """Serve the version, warm up, then the sequential baseline and the storm for each K."""
    entries: list[dict[str, Any]] = recorded["entries"]
    ks = [int(k) for k in args.ks.split(",")]
    with tempfile.TemporaryDirectory(prefix="netroot-storm-") as tmp:
        server, url = start_ganesha(Path(tmp), args.label, version, rootfs)
        try:
            wait_mounted(url, server)
            warm = time.perf_counter()
            try:
                replay_node(url, "netroot-storm-warmup", entries, args.whole_files)
            except NfsError as exc:
                raise SystemExit(
                    f"{set_file(args.label)}: {exc}: recorded on version"
                    f" {recorded['version']}, serving {version}: run with --record"
                ) from None
            warm_s = time.perf_counter() - warm
            cat_s = nfs_cat_overhead(url, entries)
            per_node = cat_s * recorded["totals"]["files"]
            print(f"warm-up node (untimed in the table): {warm_s:.2f} s; nfs-cat of one small"
                  f" file: {cat_s * 1000:.1f} ms (a process and a mount each: {per_node:.1f} s"
                  " per node if used per file)\n")  # fmt: skip
            phases = []
            whole = args.whole_files
            for k in ks:
                if not args.no_sequential:
                    phases.append(
                        measure("sequential", k, server.pid, sequential(url, k, entries, whole))
                    )
                phases.append(measure("storm", k, server.pid, storm(url, k, entries, whole)))
                print(f"  K={k} done", file=sys.stderr, flush=True)
        finally:
            server.terminate()
            server.wait(30)
    return phases


def main() -> None:
    """Record the boot set (--record) or replay it as storms of K nodes."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=None, help="default: NETROOT_CONFIG")
    parser.add_argument("--label", default="debian12")
    parser.add_argument(
        "--record",
        action="store_true",
        help="boot one VM and record its boot set first (minutes, TCG)",
    )
    parser.add_argument("--ks", default=",".join(map(str, KS)), help="comma-separated K values")
    parser.add_argument(
        "--whole-files",
        action="store_true",
        help="read every file of the set whole, not just the recorded ranges",
    )
    parser.add_argument("--no-sequential", action="store_true", help="skip the baseline")
    args = parser.parse_args()
    if args.record:
        record(args.config, args.label)
        if not args.ks:
            return  # --record --ks '': record only
    path = set_file(args.label)
    if not path.is_file():
        raise SystemExit(f"{path}: no recorded boot set: run with --record")
    recorded = json.loads(path.read_text())
    config = load_config(args.config)
    version, rootfs, _boot = active_rootfs(config, args.label)
    totals = recorded["totals"]
    set_bytes = totals["file_bytes"] if args.whole_files else totals["range_bytes"]
    print(f"boot set of {args.label} (recorded {recorded['recorded_at']}, version "
          f"{recorded['version']}): {totals['files']} files, {totals['symlinks']} symlinks, "
          f"{totals['dirs']} dirs; {totals['range_bytes'] / 1e6:.1f} MB in {totals['reads']} "
          f"ranges ({totals['file_bytes'] / 1e6:.1f} MB as whole files)")  # fmt: skip
    print(f"replaying {'whole files' if args.whole_files else 'recorded ranges'} "
          f"({set_bytes / 1e6:.1f} MB per node) against version {version}, "
          f"{os.cpu_count()} CPUs, Ganesha and clients on loopback")  # fmt: skip
    phases = replay(args, recorded, version, rootfs)
    print_table(phases)
    storms = [p for p in phases if p.mode == "storm"]
    top = storms[-1]
    print()
    cpu_per_node = top.server_cpu_s / top.k
    print(PROJECTION.format(
        cpus=os.cpu_count(), cpu_per_node=cpu_per_node, kmax=top.k, set_mb=set_bytes / 1e6,
        core_per_min=60 / max(cpu_per_node, 1e-9), cli_per_node=top.client_cpu_s / top.k,
        busy=top.machine_busy, nic_per_min=1100e6 / max(1, set_bytes) * 60,
    ))  # fmt: skip


if __name__ == "__main__":
    main()
