"""Node-report ingest: reports through a real mosquitto into the controller's database.

Phase 1 (`--reports`, default 5,000 new nodes): reports per second the
controller stores, against a plain `mosquitto_sub` draining the same stream
in the same run (target: at least 0.8 x the baseline). Stored means committed:
the time another connection to the database first sees every node.
Phase 2 (`--storm`, default 10,000 new nodes): a boot storm; every node must
be stored (none lost), with p50/p99 latency from publish to stored state.

After each phase: when the outbox was empty again (every event and state the
reports caused acknowledged by the broker), against a plain paho client
publishing the same number of messages (the phase's own envelopes, QoS 1) to
the same broker afterwards (target: the outbox empty within 2 x that time).

The controller runs as `netroot serve` (a real process, real broker, real
SQLite); the reports are published at QoS 1 by one paho client as fast as
the broker takes them. Prints figures and ratios, asserts nothing timed.

Also printed: the controller's CPU time per report while storing and per
message while draining (from /proc): steadier than the ratios when other
work shares the CPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from common import Workspace, make_root_tree
from integration.harness import Broker, Controller, report
from paho.mqtt.enums import CallbackAPIVersion

from controller.daemon.db import Database


def mac_of(i: int, phase: int) -> str:
    """A distinct unicast MAC per node and phase."""
    return f"52:54:{phase:02x}:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"


class Baseline:
    """mosquitto_sub draining the report stream: one receive timestamp and topic per line.

    Its output is read as it comes, by a thread: unread, a pipe holds about a
    thousand lines, and mosquitto_sub, blocked writing the next, stops taking
    messages until someone reads (the broker queues them meanwhile). Read only
    after publishing (as an earlier version of this benchmark did), the baseline
    stalled for most of a phase and looked slower than it is.
    """

    def __init__(self, broker: Broker, count: int, topics: str = "netroot/node/+/report") -> None:
        self.sub = _mosquitto_sub(broker, count, topics)
        self._out: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        out, _ = self.sub.communicate(timeout=600)
        self._out.append(out)

    def lines(self) -> list[str]:
        """Every line, once mosquitto_sub has received its count and exited."""
        self._reader.join(600)
        return self._out[0].splitlines()


def _mosquitto_sub(broker: Broker, count: int, topics: str) -> subprocess.Popen[str]:
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(broker.port),
            "-q",
            "1",
            "-t",
            topics,
            "-C",
            str(count),
            "-F",
            "%U %t",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # subscribed before the first publish
    return sub


def publish_all(broker: Broker, payloads: list[tuple[str, bytes]]) -> dict[str, float]:
    """Publish at QoS 1 as fast as possible; returns the publish time of each topic."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-agents")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    sent: dict[str, float] = {}
    infos = []
    for topic, payload in payloads:
        sent[topic] = time.time()
        infos.append(client.publish(topic, payload, qos=1))
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()
    return sent


def cpu_s(pid: int) -> float:
    """CPU seconds (user and system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sched_s(pid: int) -> tuple[float, float]:
    """(on a CPU, runnable but waiting for one) in seconds, summed over the process's threads."""
    run = wait = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            fields = (task / "schedstat").read_text().split()
            run, wait = run + int(fields[0]), wait + int(fields[1])
    return run / 1e9, wait / 1e9


def outbox_seq(db: Database) -> int:
    """The last outbox seq handed out (AUTOINCREMENT): how many messages were ever queued."""
    row = db.rows("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")
    return int(row[0][0]) if row else 0


def outbox_empty(db: Database) -> float:
    """Poll until the outbox is empty; returns when it was seen empty."""
    deadline = time.monotonic() + 600
    while db.refresh_outbox_count() and time.monotonic() < deadline:
        time.sleep(0.02)
    return time.time()


def paho_baseline(broker: Broker, payloads: list[tuple[str, bytes, bool]]) -> float:
    """Seconds a plain paho client takes to publish these (QoS 1) until the last PUBACK."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    t0 = time.time()
    infos = [client.publish(t, p, qos=1, retain=r) for t, p, r in payloads]
    for info in infos:
        info.wait_for_publish(120)
    elapsed = time.time() - t0
    client.disconnect()
    client.loop_stop()
    return elapsed


class PahoDrain:
    """A plain paho subscriber (MQTT 5, QoS 1, acknowledged one by one) counting what arrives.

    What any Python receiver built on paho pays per message before doing
    anything with it: the floor under the controller's ingest.
    """

    def __init__(self, broker: Broker, topics: str, count: int) -> None:
        self.count = count
        self.received = 0
        self.last = 0.0
        self.done = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-drain", protocol=paho.MQTTv5
        )
        self.client.manual_ack_set(True)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(topics, qos=1)
        self.client.loop_start()
        time.sleep(0.5)  # subscribed before the first publish

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        client.ack(msg.mid, msg.qos)
        self.received += 1
        self.last = time.time()
        if self.received >= self.count:
            self.done.set()

    def wait(self) -> float:
        """When the last message arrived."""
        self.done.wait(600)
        self.client.disconnect()
        self.client.loop_stop()
        return self.last


def receive_floor(broker: Broker, count: int) -> None:
    """Plain paho and mosquitto_sub draining one stream of reports (not the controller's)."""
    topics = "bench/floor/+/report"
    payloads = [
        (f"bench/floor/{mac}/report", json.dumps(report(mac, version="v")).encode())
        for mac in (mac_of(i, 9) for i in range(count))
    ]
    sub = Baseline(broker, count, topics)
    drain = PahoDrain(broker, topics, count)
    sent = publish_all(broker, payloads)
    t0 = min(sent.values())
    paho_s = drain.wait() - t0
    base_s = max(float(line.split(" ", 1)[0]) for line in sub.lines()) - t0
    print(f"receive floor: {count} reports published in {max(sent.values()) - t0:.2f} s")
    print(f"  plain paho subscriber (MQTT 5, QoS 1, manual ack): {count / paho_s:,.0f} reports/s")
    print(f"  mosquitto_sub: {count / base_s:,.0f} reports/s")
    print(f"  ratio paho/mosquitto_sub: {base_s / paho_s:.2f} (a Python paho receiver's ceiling)")


def committed_at(db: Database, number: int, count: int) -> tuple[float, bool] | None:
    """When a reader first saw all `count` nodes of phase `number`, and whether that
    was at the first look (None: not within 600 s). Polled every 5 ms (a count by
    the primary key's range: a fraction of a millisecond of CPU a look)."""
    lo, hi = f"52:54:{number:02x}:", f"52:54:{number:02x};"  # ';' follows ':'
    deadline = time.monotonic() + 600
    first = True
    while time.monotonic() < deadline:
        ((seen,),) = db.rows("SELECT COUNT(*) FROM nodes WHERE mac >= ? AND mac < ?", (lo, hi))
        if seen >= count:
            return time.time(), first
        first = False
        time.sleep(0.005)
    return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def phase(
    ws: Workspace, broker: Broker, pid: int, count: int, *, number: int, version: str
) -> dict[str, float]:
    """Publish `count` boot reports of new nodes to the controller `pid`; returns the figures."""
    macs = [mac_of(i, number) for i in range(count)]
    payloads = [
        (f"netroot/node/{mac}/report", json.dumps(report(mac, version=version)).encode())
        for mac in macs
    ]
    db = Database(ws.state / "netroot.db", readonly=True)
    seq0 = outbox_seq(db)
    sub = Baseline(broker, count)
    cpu0 = cpu_s(pid)
    sched0 = sched_s(pid)
    sent = publish_all(broker, payloads)
    t0 = min(sent.values())
    received: dict[str, float] = {}
    for line in sub.lines():
        stamp, topic = line.split(" ", 1)
        received.setdefault(topic, float(stamp))
    wanted = set(macs)
    seen_all = committed_at(db, number, count)
    stored_at = {m: t for m, t in db.node_updated_at().items() if m in wanted}
    cpu1 = cpu_s(pid)
    sched1 = sched_s(pid)
    empty_at = outbox_empty(db)
    cpu2 = cpu_s(pid)
    messages = outbox_seq(db) - seq0  # what the phase queued (reports make events and states)
    envelopes = [bytes(r[0]) for r in db.rows(
        "SELECT envelope FROM journal ORDER BY seq DESC LIMIT 1000")]  # fmt: skip
    db.close()
    copies = [
        (f"bench/paho/{i % count}", envelopes[i % len(envelopes)], i % 3 == 2)
        for i in range(messages)
    ]
    paho_s = paho_baseline(broker, copies)
    lat = [stored_at[m] - sent[f"netroot/node/{m}/report"] for m in stored_at]
    base_lat = [received[t] - sent[t] for t in received]
    stamped_s = max(stored_at.values()) - t0 if stored_at else float("inf")
    # Done when a reader sees every node: a row's stamp is taken as the report is
    # applied, before its transaction commits. Seen at the first look, the
    # controller finished before mosquitto_sub; its last stamp is then the figure.
    controller_s = stamped_s if seen_all is None or seen_all[1] else seen_all[0] - t0
    baseline_s = max(received.values()) - t0
    return {
        "count": count,
        "stored": len(stored_at),
        "publish_s": max(sent.values()) - t0,
        "controller_s": controller_s,
        "stamped_s": stamped_s,
        "baseline_s": baseline_s,
        "p50": statistics.median(lat) if lat else float("nan"),
        "p99": percentile(lat, 0.99) if lat else float("nan"),
        "base_p50": statistics.median(base_lat),
        "base_p99": percentile(base_lat, 0.99),
        "messages": messages,
        "drain_s": empty_at - t0,
        "after_stored_s": empty_at - max(stored_at.values()) if stored_at else float("inf"),
        "paho_s": paho_s,
        "cpu_store_s": cpu1 - cpu0,
        "cpu_drain_s": cpu2 - cpu1,
        "on_cpu_s": sched1[0] - sched0[0],
        "cpu_wait_s": sched1[1] - sched0[1],
    }


def show(name: str, r: dict[str, float]) -> None:
    ctl_rate = r["stored"] / r["controller_s"]
    base_rate = r["count"] / r["baseline_s"]
    print(f"{name}: {int(r['count'])} reports published in {r['publish_s']:.2f} s")
    print(
        f"  controller: {int(r['stored'])}/{int(r['count'])} stored in "
        f"{r['controller_s']:.2f} s = {ctl_rate:,.0f} reports/s (all committed; the last row "
        f"stamped at {r['stamped_s']:.2f} s); latency to the row's stamp p50 "
        f"{r['p50'] * 1e3:.0f} ms, p99 {r['p99'] * 1e3:.0f} ms"
    )
    print(
        f"  mosquitto_sub: drained in {r['baseline_s']:.2f} s = {base_rate:,.0f} reports/s; "
        f"latency p50 {r['base_p50'] * 1e3:.0f} ms, p99 {r['base_p99'] * 1e3:.0f} ms"
    )
    print(
        f"  ratio controller/mosquitto_sub: {ctl_rate / base_rate:.2f} (target >= 0.8); "
        f"lost: {int(r['count'] - r['stored'])}"
    )
    print(
        f"  outbox: {int(r['messages'])} messages, empty {r['drain_s']:.2f} s after the first "
        f"report ({r['after_stored_s']:.2f} s after the last node was stored)"
    )
    print(
        f"  plain paho publisher: {int(r['messages'])} messages in {r['paho_s']:.2f} s = "
        f"{r['messages'] / r['paho_s']:,.0f}/s; outbox drain / paho: "
        f"{r['drain_s'] / r['paho_s']:.2f} (target <= 2)"
    )
    print(
        f"  controller CPU: {r['cpu_store_s']:.2f} s storing = "
        f"{r['cpu_store_s'] / r['count'] * 1e6:.0f} us per report; {r['cpu_drain_s']:.2f} s "
        f"draining after = {r['cpu_drain_s'] / r['messages'] * 1e6:.0f} us per outbox message"
    )
    print(
        f"  while storing ({r['controller_s']:.2f} s): controller threads on a CPU "
        f"{r['on_cpu_s']:.2f} s, runnable but waiting for a CPU {r['cpu_wait_s']:.2f} s"
    )


def main() -> None:
    """Run both phases against one broker and one controller."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=5_000)
    parser.add_argument("--storm", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: /var/tmp)")
    parser.add_argument(
        "--floor",
        type=int,
        default=0,
        help="first, this many reports drained by a plain paho subscriber and mosquitto_sub "
        "side by side (without the controller): what a Python paho receiver can reach",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir or "/var/tmp", prefix="netroot-bench-") as tmp:
        root = Path(tmp)
        broker = Broker(root / "broker").start()
        if args.floor:
            receive_floor(broker, args.floor)
        ws = Workspace(root / "ws", extra_config=broker.mqtt_config())
        make_root_tree(ws.tree)
        ws.write()
        ws.run("build", "demo", "--activate")
        version = ws.active() or ""
        controller = Controller(ws).start()
        try:
            assert controller.proc is not None
            pid = controller.proc.pid
            show("ingest", phase(ws, broker, pid, args.reports, number=1, version=version))
            show("boot storm", phase(ws, broker, pid, args.storm, number=2, version=version))
            controller.stop()
        finally:
            controller.cleanup()
            broker.stop()


if __name__ == "__main__":
    main()
