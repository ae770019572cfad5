"""Node reports survive a SIGKILL of the controller: the broker's acknowledgement of a
report to its sender is a promise, so the controller acknowledges a report to the broker
only once the transaction applying it has committed (the broker redelivers the rest)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from integration.harness import WAIT_S, Broker, Collector, Controller, report, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from support import Workspace, make_root_tree

pytestmark = pytest.mark.integration

BURST = 1000
KILL_AT = 400  # reports acknowledged to the sender when the controller is SIGKILLed


def mac(i: int) -> str:
    return f"52:54:00:10:{i >> 8:02x}:{i & 0xFF:02x}"


class Sender:
    """An outside node fleet: paho-mqtt, QoS 1, each report waits for its PUBACK."""

    def __init__(self, port: int, version: str) -> None:
        self.version = version
        self.acked: list[str] = []  # macs whose report the broker acknowledged, in order
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-fleet-{uuid.uuid4().hex[:8]}"
        )
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        self.thread = threading.Thread(target=self._burst, daemon=True)

    def _burst(self) -> None:
        try:
            for i in range(BURST):
                m = mac(i)
                body = json.dumps(report(m, version=self.version, ip=f"10.1.{i >> 8}.{i & 0xFF}"))
                info = self.client.publish(f"netroot/node/{m}/report", body, qos=1)
                info.wait_for_publish(WAIT_S)
                if info.is_published():
                    with self._lock:
                        self.acked.append(m)
        except BaseException as exc:  # reported by the test thread
            self.error = exc

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def served(tmp_path: Path, broker: Broker) -> Iterator[tuple[Workspace, Controller]]:
    ws = Workspace(tmp_path, extra_config=broker.mqtt_config())
    make_root_tree(ws.tree)
    ws.write()
    ws.run("build", "demo", "--activate")
    controller = Controller(ws)
    yield ws, controller
    controller.cleanup()


def test_a_burst_of_boot_reports_loses_none_when_the_controller_is_sigkilled(
    served: tuple[Workspace, Controller], broker: Broker
) -> None:
    ws, controller = served
    version = ws.active()
    assert version is not None
    collector = Collector(broker.port, topics=("netroot/events/node/#",))
    sender = Sender(broker.port, version)
    try:
        controller.start()
        sender.thread.start()
        wait_for(lambda: sender.count() >= KILL_AT or sender.error, f"{KILL_AT} PUBACKs")
        killed_at = sender.count()
        controller.kill()  # mid-burst: reports are received, some not yet committed
        controller.start()  # the broker delivers what it kept meanwhile and what it had sent
        controller.kill()  # and this one dies as that backlog arrives
        controller.start()
        sender.thread.join(WAIT_S)
        assert killed_at < BURST, "the burst was over before the SIGKILL"
        assert sender.error is None
        acked = set(sender.acked)
        assert len(acked) == BURST  # the broker took every report (it never refuses one)

        def missing() -> set[str]:
            return acked - {n["mac"] for n in ws.json("nodes")}

        deadline = time.monotonic() + WAIT_S
        while (lost := missing()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not lost, f"{len(lost)} acknowledged reports never applied, e.g. {sorted(lost)[:5]}"

        # Each report implies node.booted and node.current: each published at least once.
        for kind in ("node.booted", "node.current"):

            def all_published(kind: str = kind) -> bool:
                return acked <= {e["data"]["mac"] for e in collector.events(kind)}

            wait_for(all_published, f"{kind} for every node")
        assert controller.alive()
    finally:
        sender.close()
        collector.close()
