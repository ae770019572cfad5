"""Helpers for the daemon tests (no tests here): a real mosquitto, a subscriber, the
controller as a process that speaks sd_notify, and node agents made of mosquitto_pub.

The daemon tests, conftest.py and bench/bench_ingest.py import it as `integration.harness`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from support import REPO, Workspace

T = TypeVar("T")
WAIT_S = 90.0  # a guard against hanging, never a timing assertion
BOOT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
BOOT_ID_2 = "9c3b6f3e-2d0a-4d7e-8a51-1f0e6c2b7a10"


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = WAIT_S) -> T:
    """Poll probe until it returns something truthy; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    """mosquitto on a free loopback port, with persistence so sessions survive a restart."""

    root: Path
    port: int = field(default_factory=free_port)
    extra: str = ""
    proc: subprocess.Popen[bytes] | None = None
    config_text: str | None = None  # a whole mosquitto.conf instead of the test default

    @property
    def conf(self) -> Path:
        return self.root / "mosquitto.conf"

    @property
    def log(self) -> Path:
        return self.root / "mosquitto.log"

    def start(self) -> Broker:
        self.root.mkdir(parents=True, exist_ok=True)
        # As root mosquitto would switch to user `mosquitto`, which cannot write here.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            self.config_text
            or f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {self.root}/\n"
            # Unbounded queues: a slow test subscriber must not lose QoS 1 messages.
            "max_queued_messages 0\n"
            f"{self.extra}"
        )
        with self.conf.open("a") as conf:
            conf.write(f"\n{user}log_dest file {self.log}\nlog_type all\n")
        # stderr to a file, never a pipe nobody reads: a config that logs to
        # stderr (as `netroot up`'s does) would fill it and hang the broker.
        with self.stderr_file.open("ab") as stderr:
            self.proc = subprocess.Popen(
                ["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=stderr
            )
        wait_for(self._listening, f"mosquitto on port {self.port}", timeout=20)
        return self

    @property
    def stderr_file(self) -> Path:
        return self.root / "mosquitto.stderr"

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            stderr = self.stderr_file.read_text(errors="replace")[-4000:]
            raise AssertionError(f"mosquitto exited: {stderr}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
            return True
        return False

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistence file (sessions, queued messages)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.proc = None

    def mqtt_config(self) -> str:
        return f'[mqtt]\nhost = "127.0.0.1"\nport = {self.port}\n'


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Collector:
    """A subscriber with a persistent session: it also gets what was sent while it was away."""

    def __init__(self, port: int, topics: tuple[str, ...] = ("netroot/#",)) -> None:
        self.topics = topics
        self.messages: list[Received] = []
        self.ignored_builds: set[str] = set()  # events of these builds are left out of events()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-collector-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        # paho annotates the delays int, yet does float arithmetic with them: 0.2 s is meant
        self.client.reconnect_delay_set(0.2, 1)  # type: ignore[arg-type]
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(20):
            raise AssertionError("the test subscriber could not subscribe")

    def _on_connect(self, client: paho.Client, *args: Any) -> None:
        for topic in self.topics:
            client.subscribe(topic, qos=1)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def all(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def events(self, kind: str | None = None, topic: str | None = None) -> list[dict[str, Any]]:
        """Envelopes (first delivery of each id), optionally of one type suffix or topic."""
        seen: set[str] = set()
        out = []
        for m in self.all():
            if topic is not None and m.topic != topic:
                continue
            try:
                env = m.json()
            except ValueError:
                continue
            if not isinstance(env, dict) or "type" not in env or env.get("id") in seen:
                continue
            seen.add(env["id"])
            data = env.get("data")
            if isinstance(data, dict) and data.get("build_id") in self.ignored_builds:
                continue
            if kind is None or env["type"] == f"org.netroot.{kind}":
                out.append(env)
        return out

    def wait_event(
        self, kind: str, count: int = 1, *, within: float = WAIT_S, **data: Any
    ) -> list[dict[str, Any]]:
        """Wait (at most `within` s) for `count` events of a type whose data has the fields."""

        def probe() -> list[dict[str, Any]] | None:
            found = [
                e for e in self.events(kind) if all(e["data"].get(k) == v for k, v in data.items())
            ]
            return found if len(found) >= count else None

        return wait_for(probe, f"{count} {kind} event(s) with {data}", within)


class Controller:
    """`netroot serve` as systemd would run it: a notify socket, signals, a log file."""

    def __init__(
        self, ws: Workspace, prefix: tuple[str, ...] = (), args: tuple[str, ...] = ()
    ) -> None:
        self.ws = ws
        self.prefix = prefix  # such as `ip netns exec NS`
        self.args = args  # after `serve`
        self.log = ws.root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._sockdir = Path(tempfile.mkdtemp(prefix="nr-notify-"))  # short: sun_path limit
        self.notify_path = self._sockdir / "notify"
        self.notifications: list[str] = []
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._stop_reading = threading.Event()

    def start(self) -> Controller:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_path.unlink(missing_ok=True)
        self._sock.bind(str(self.notify_path))
        self._sock.settimeout(0.2)
        with self._lock:  # a restart waits for its own READY=1, not the last run's
            self.notifications.clear()
        # Read all the time, as systemd does: the datagram queue holds only a few.
        self._stop_reading = threading.Event()
        self._reader = threading.Thread(
            target=self._read, args=(self._sock, self._stop_reading), daemon=True
        )
        self._reader.start()
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "NOTIFY_SOCKET": str(self.notify_path),
            "WATCHDOG_USEC": "2000000",
        }
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.prefix, *self.ws.argv("serve", *self.args)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                cwd=self.ws.root,
            )
        self.wait_notify("READY=1")
        return self

    def _read(self, sock: socket.socket, stop: threading.Event) -> None:
        while True:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                if stop.is_set():
                    return  # told to stop, and nothing is left to read
                continue
            except OSError:
                return  # closed
            with self._lock:
                self.notifications.append(data.decode())

    def wait_notify(self, line: str) -> None:
        def probe() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited early:\n{self.log_text()[-3000:]}")
            return any(line in n.splitlines() for n in self.received())

        wait_for(probe, f"sd_notify {line}")

    def received(self) -> list[str]:
        """Every sd_notify datagram so far."""
        with self._lock:
            return list(self.notifications)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self._close()
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)
        self._close()

    def _close(self) -> None:
        if self._sock is not None:
            # The daemon has exited: the reader takes what it sent last (STOPPING=1)
            # and returns once the queue stays empty for a receive timeout.
            self._stop_reading.set()
            self._reader.join(WAIT_S)
            self._sock.close()
            self._sock = None

    def cleanup(self) -> None:
        if self.alive():
            self.kill()
        self._close()
        shutil.rmtree(self._sockdir, ignore_errors=True)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, text: str, count: int = 1) -> None:
        wait_for(lambda: self.log_text().count(text) >= count, f"{text!r} in the daemon log")


def report(mac: str, kind: str = "boot", **fields: Any) -> dict[str, Any]:
    """What the node agent publishes."""
    body: dict[str, Any] = {"kind": kind, "mac": mac}
    if kind != "offline":
        body.update(label="demo", boot_id=BOOT_ID, ip="10.0.2.15", kernel="6.1.0-test")
    body.update(fields)
    return body


def publish(broker: Broker, topic: str, payload: bytes | str) -> None:
    """mosquitto_pub, QoS 1, as a node agent would."""
    data = payload.encode() if isinstance(payload, str) else payload
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", topic, "-s"],
        input=data,
        check=True,
        timeout=30,
    )


def agent_report(broker: Broker, mac: str, kind: str = "boot", **fields: Any) -> None:
    publish(broker, f"netroot/node/{mac}/report", json.dumps(report(mac, kind, **fields)))


@contextlib.contextmanager
def agent_session(broker: Broker, mac: str, out: Path) -> Iterator[subprocess.Popen[bytes]]:
    """An agent's cmd subscription with its will; SIGKILL it to make the will fire."""
    will = json.dumps({"kind": "offline", "mac": mac})
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                str(broker.port),
                "-q",
                "1",
                "-i",
                f"agent-{mac.replace(':', '')}",
                "-t",
                f"netroot/node/{mac}/cmd",
                "--will-topic",
                f"netroot/node/{mac}/report",
                "--will-payload",
                will,
                "--will-qos",
                "1",
                "-k",
                "5",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
