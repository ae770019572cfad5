"""Seconds from qemu start to each boot milestone and to the agent's MQTT report.

Boots the label's active version with `netroot boot --headless
--stop-after-report`, once with pxelinux loading kernel and initramfs over
TFTP (the baseline) and once with qemu's iPXE loading them over HTTP from
netroot's boot file server (`--boot-files http`), and prints the milestones
side by side with the HTTP/TFTP ratio. `load` is kernel and initramfs loaded,
counted from the loader's start (pxelinux's banner; iPXE's first HTTP
request). `--direct` adds a direct kernel boot (qemu -kernel: no firmware,
no TFTP). The label must be built and activated. A broker is started here on
a free loopback port; the config is otherwise the one given.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO

from controller.config.load import load_config
from controller.store import versions
from controller.store.layout import label_paths

MILESTONES = ("pxe", "boot-files", "kernel", "nfs-root", "switch-root", "login", "agent", "report")


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for a dumped Config: scalars, string lists and nested tables."""
    lines, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif value is not None:
            lines.append(f"{json.dumps(key)} = {_toml_value(value)}")
    out = "\n".join(lines) + "\n"
    for key, value in tables:
        name = f"{prefix}{json.dumps(key)}"
        out += f"\n[{name}]\n" + to_toml(value, prefix=f"{name}.")
    return out


MODES = ("tftp", "http", "direct")


def boot(config: Path, label: str, mode: str) -> dict[str, float]:
    """One boot; milestone -> seconds since qemu started."""
    argv = [
        sys.executable,
        "-m",
        "controller",
        "--config",
        str(config),
        "--json",
        "boot",
        label,
        "--headless",
        "--stop-after-report",
        "--ssh-port",
        "0",
        "--timeout",
        "1800",
    ]
    argv += ["--direct"] if mode == "direct" else ["--boot-files", mode]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False,
                          timeout=2000)  # fmt: skip
    seen: dict[str, float] = {}
    for line in done.stdout.splitlines():
        data = json.loads(line)
        if "milestone" in data and data["milestone"] != "failure":
            seen.setdefault(data["milestone"], data["at"])
    if done.returncode != 0:
        print(f"  boot failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
    if "pxe" in seen and "boot-files" in seen:
        seen["load"] = seen["boot-files"] - seen["pxe"]
    return seen


def median(runs: list[dict[str, float]], name: str) -> float | None:
    """The median of one milestone over runs that reached it."""
    times = sorted(r[name] for r in runs if name in r)
    return times[len(times) // 2] if times else None


def main() -> None:
    """Print milestone seconds for PXE and direct boots, and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=None, help="default: NETROOT_CONFIG")
    parser.add_argument("--label", default="debian12")
    parser.add_argument("--runs", type=int, default=1, help="boots per mode (median printed)")
    parser.add_argument("--direct", action="store_true", help="also a direct kernel boot")
    args = parser.parse_args()
    config = load_config(args.config)
    paths = label_paths(config, args.label)
    active = versions.active_version(paths)
    if active is None:
        sys.exit(f"{args.label}: no active version; run `netroot build {args.label} --activate`")
    manifest = versions.read_manifest(paths, active)
    modes = MODES if args.direct else MODES[:2]
    with tempfile.TemporaryDirectory(prefix="netroot-bench-") as tmp:
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
            results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
            for _ in range(args.runs):
                for mode, runs in results.items():
                    runs.append(boot(bench_config, args.label, mode))
        finally:
            broker.terminate()
            broker.wait(10)
    print(f"boot of {args.label} {active}: seconds from qemu start (median of {args.runs},"
          f" {os.cpu_count()} host CPUs, TCG unless KVM works)")  # fmt: skip
    print(
        f"kernel {manifest.kernel.size / 1e6:.1f} MB, initramfs {manifest.initrd.size / 1e6:.1f} MB"
    )
    print(
        f"{'milestone':<12} " + " ".join(f"{m.upper():>8}" for m in modes) + f" {'HTTP/TFTP':>10}"
    )
    for name in ("load", *MILESTONES):
        cells = [median(results[mode], name) for mode in modes]
        if all(c is None for c in cells):
            continue
        shown = [f"{c:8.1f}" if c is not None else f"{'-':>8}" for c in cells]
        tftp, http = cells[0], cells[1]
        ratio = f"{http / tftp:10.2f}" if tftp and http is not None else f"{'-':>10}"
        print(f"{name:<12} {' '.join(shown)} {ratio}")


if __name__ == "__main__":
    main()
