"""A subscriber that joins late rebuilds the whole state of 10,000 nodes from retained
topics, with one subscription, on the broker `netroot up` starts (its limits as shipped)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from integration.harness import BOOT_ID, Broker, Controller, wait_for
from integration.outside_client import OutsideSubscriber
from paho.mqtt.enums import CallbackAPIVersion
from support import Workspace, make_root_tree

from controller.cli.up_cmds import BROKER_CONF

pytestmark = pytest.mark.integration

NODES = 10_000
LATE_S = 300.0  # a guard against hanging, not a timing assertion


def mac(i: int) -> str:
    return "52:54:01:" + ":".join(f"{b:02x}" for b in i.to_bytes(3, "big"))


def boot_storm(port: int, version: str) -> None:
    """Every node's agent publishes its boot report (QoS 1), many in flight at once."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"storm-{uuid.uuid4().hex}")
    client.max_inflight_messages_set(500)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = []
    for i in range(NODES):
        report = {
            "kind": "boot", "mac": mac(i), "label": "demo", "version": version,
            "boot_id": BOOT_ID, "ip": f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}",
        }  # fmt: skip
        infos.append(client.publish(f"netroot/node/{mac(i)}/report", json.dumps(report), qos=1))
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def late_join(port: int, schemas: dict[str, dict[str, Any]]) -> OutsideSubscriber:
    """One `netroot/state/#` subscription; done once the index's node count has arrived."""
    joiner = OutsideSubscriber(port, schemas, topics=("netroot/state/#",), persistent=False)
    done = threading.Event()

    def complete() -> bool:
        derived = joiner.derived()
        index = derived["index"]
        if index is not None and len(derived["nodes"]) >= index["node_count"]:
            done.set()
        return done.is_set()

    try:
        wait_for(complete, "the late joiner's retained states", timeout=LATE_S)
    except AssertionError:
        derived = joiner.derived()
        raise AssertionError(
            f"late joiner got {len(derived['nodes'])} node states, index "
            f"{(derived['index'] or {}).get('node_count')}"
        ) from None
    return joiner


def test_a_late_subscriber_rebuilds_ten_thousand_nodes(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", config_text=None)
    broker.config_text = BROKER_CONF.format(port=broker.port)
    broker.start()
    ws = Workspace(tmp_path, extra_config=broker.mqtt_config())
    make_root_tree(ws.tree)
    ws.write()
    ws.run("build", "demo", "--activate")
    controller = Controller(ws)
    try:
        controller.start()
        version = ws.active()
        assert version is not None
        t0 = time.monotonic()
        boot_storm(broker.port, version)
        wait_for(
            lambda: ws.json("status")["nodes"].get("up") == NODES,
            "every node to be up",
            timeout=LATE_S,
        )
        wait_for(
            lambda: ws.json("status")["outbox"]["pending"] == 0,
            "the outbox to drain",
            timeout=LATE_S,
        )
        stored = time.monotonic() - t0
        schemas = ws.json("schema")
        t1 = time.monotonic()
        joiner = late_join(broker.port, schemas)
        joined = time.monotonic() - t1
        derived = joiner.derived()
        real = {n["mac"]: n["state"] for n in ws.json("nodes")}
        assert derived["nodes"] == real
        assert len(real) == NODES
        assert derived["images"] == {"demo": version}
        index = derived["index"]
        assert index["node_count"] == NODES
        assert index["labels"]["demo"] == {"active": version, "nodes": {"up": NODES}}
        assert joiner.problems == []
        retained = [s for s in joiner.all() if s.retain]
        assert len(retained) == len(joiner.all()), "only retained states, no live traffic"
        print(f"\n{NODES} nodes: stored and published in {stored:.1f} s; "
              f"late joiner had every state after {joined:.1f} s")  # fmt: skip
        joiner.close()
    finally:
        controller.cleanup()
        broker.stop()
