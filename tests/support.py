"""Test and benchmark support: fake-but-real root trees, configs, running the CLI."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
KVER = "6.1.0-test"
WAIT_S = 60.0  # how long a wait may take: a guard against hanging, never a timing assertion
POLL_S = 0.05

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T], what: str, within: float = WAIT_S, interval: float = POLL_S
) -> T:
    """Poll probe until it returns something truthy, and return that; fail naming `what`."""
    deadline = time.monotonic() + within
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        time.sleep(interval)
    return value


def stop_process(process: subprocess.Popen[bytes], within: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `within` seconds; reaped."""
    process.terminate()
    try:
        process.wait(within)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(within)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Mosquitto:
    """mosquitto on a free loopback port, logging each subscription it takes."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @classmethod
    def start(cls, directory: Path) -> Mosquitto:
        """Start it with its config and log in directory; return once it listens."""
        port = free_port()
        conf = directory / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\n"
            "log_dest stderr\nlog_type error\nlog_type warning\nlog_type subscribe\n"
        )
        log = directory / "mosquitto.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=stderr)
        broker = cls(process, port, log)
        wait_until(broker.listening, f"mosquitto listening on port {port}")
        return broker

    def listening(self) -> bool:
        """True once it accepts connections (fails if it exited)."""
        assert self.process.poll() is None, f"mosquitto exited: {self.log.read_text()}"
        return port_open(self.port)

    def wait_subscribed(self, client_id: str, topic: str) -> None:
        """Return once the client's subscription to topic is taken.

        mosquitto handles one packet at a time and logs a subscription as it
        adds it: a message published after the line is written reaches the client.
        """
        line = re.compile(rf"^\d+: {re.escape(client_id)} \d {re.escape(topic)}$", re.MULTILINE)
        wait_until(lambda: line.search(self.log.read_text()), f"{client_id} subscribed to {topic}")

    def stop(self) -> None:
        """Terminate it and wait."""
        self.process.terminate()
        self.process.wait(10)


def make_root_tree(root: Path, files: int = 20, kver: str = KVER, file_size: int = 64) -> Path:
    """A small root tree with the shape of a real one: /boot kernel and initramfs,
    merged-/usr symlinks, nested directories and `files` regular files."""
    for sub in ("boot", "etc", "usr/bin", "usr/lib", "var/lib", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "boot" / f"vmlinuz-{kver}").write_bytes(os.urandom(4096) + b"kernel")
    (root / "boot" / f"initrd.img-{kver}").write_bytes(os.urandom(8192) + b"initrd")
    for name, target in (("bin", "usr/bin"), ("lib", "usr/lib")):
        if not (root / name).is_symlink():
            (root / name).symlink_to(target)
    (root / "etc" / "hostname").write_text("node\n")
    (root / "etc" / "os-release").write_text('ID=netroot-test\nVERSION_ID="1"\n')
    payload = b"x" * file_size
    per_dir = 500
    for i in range(files):
        d = root / "usr" / "lib" / f"pkg{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"file{i:06d}").write_bytes(payload + str(i).encode())
    return root


def make_tarball(tree: Path, archive: Path) -> Path:
    """tar of a tree, members relative to its root (as `tar -C tree -cf archive .`)."""
    with tarfile.open(archive, "w") as tar:
        tar.add(tree, arcname=".")
    return archive


@dataclass
class Workspace:
    """A config with one import label, its source tree, overlays and state, all under tmp."""

    root: Path
    label: str = "demo"
    keep_versions: int = 3
    extra_config: str = ""
    env: dict[str, str] = field(default_factory=dict)
    # The [http] table: off, so daemons of tests running side by side never share a port.
    http: str = 'listen = ""'

    @property
    def config(self) -> Path:
        """The config file."""
        return self.root / "netroot.toml"

    @property
    def tree(self) -> Path:
        """The source tree the recipe imports."""
        return self.root / "source-tree"

    @property
    def overlays(self) -> Path:
        """overlays_dir."""
        return self.root / "overlays"

    @property
    def state(self) -> Path:
        """state_dir."""
        return self.root / "state"

    @property
    def export_link(self) -> Path:
        """The label's export symlink."""
        return self.root / "export" / self.label

    @property
    def tftp_link(self) -> Path:
        """The label's TFTP symlink (to the version's boot/)."""
        return self.root / "tftp" / "netroot" / self.label

    def images(self) -> Path:
        """images/<label>."""
        return self.state / "images" / self.label

    def write(self, source: str = "source-tree") -> Workspace:
        """Write config and recipe files."""
        (self.root / "recipes").mkdir(parents=True, exist_ok=True)
        (self.root / "recipes" / f"{self.label}.toml").write_text(
            f'builder = "import"\nsource = "../{source}"\n'
        )
        self.config.write_text(
            f'state_dir = "state"\nrecipes_dir = "recipes"\noverlays_dir = "overlays"\n'
            f'export_root = "export"\ntftp_root = "tftp"\n{self.extra_config}\n'
            f"[http]\n{self.http}\n"
            f'[labels.{self.label}]\nrecipe = "{self.label}.toml"\n'
            f"keep_versions = {self.keep_versions}\n"
        )
        return self

    def argv(self, *args: str) -> list[str]:
        """argv of a netroot command against this workspace."""
        return [sys.executable, "-m", "controller", "--config", str(self.config), *args]

    def run(
        self,
        *args: str,
        check: bool = True,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[str]:
        """Run netroot; check=True asserts exit status 0 and shows stderr otherwise."""
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **self.env, **(env or {})}
        result = subprocess.run(
            [*prefix, *self.argv(*args)],
            capture_output=True,
            text=True,
            env=full_env,
            cwd=self.root,
            check=False,
            timeout=300,
        )
        if check:
            assert result.returncode == 0, f"netroot {' '.join(args)} failed:\n{result.stderr}"
        return result

    def json(self, *args: str) -> Any:
        """Run netroot --json and parse stdout."""
        return json.loads(self.run("--json", *args).stdout)

    def versions(self) -> list[str]:
        """Version ids, oldest first."""
        return [v["version"] for v in self.json("versions", self.label)]

    def active(self) -> str | None:
        """The active version per `netroot versions`."""
        return next((v["version"] for v in self.json("versions", self.label) if v["active"]), None)


def snapshot(path: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under path: (mode, size, link target or content prefix)."""
    result: dict[str, tuple[int, int, str]] = {}
    if not path.exists():
        return result
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        if p.is_symlink():
            detail = os.readlink(p)
        elif p.is_file():
            detail = p.read_bytes()[:64].hex()
        else:
            detail = ""
        result[str(p.relative_to(path))] = (st.st_mode, st.st_size if p.is_file() else 0, detail)
    return result
