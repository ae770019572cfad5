"""/metrics: one custom collector that reads the fleet at scrape time.

No counters are updated around the code: the state database and the store
already hold every figure, so a scrape reads them (daemon.web.fleet) and the
numbers can never drift from what `netroot nodes` or `versions` show. The
registry is private to the server (no process-global state).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from controller.daemon.web.fleet import FINISHED, Fleet, Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _buckets(h: Histogram) -> list[tuple[str, float]]:
    bounds = [*(repr(b) for b in h.bounds), "+Inf"]
    return [(b, float(c)) for b, c in zip(bounds, h.counts, strict=True)]


class FleetCollector(Collector):
    """Turns one reading of the fleet into metric families."""

    def __init__(
        self,
        read: Callable[[], Fleet],
        connected: Callable[[], bool | None],
        reports: Callable[[], int],
    ) -> None:
        self.read = read
        self.connected = connected  # None: mqtt disabled
        self.reports = reports  # node messages accepted since the daemon started

    def collect(self) -> Iterator[Metric]:
        """Read the fleet now and yield every family."""
        fleet = self.read()
        yield from _nodes(fleet)
        yield from _boots(fleet)
        # The one figure not in the database: Prometheus rates it (a restart resets it).
        reports = CounterMetricFamily(
            "netroot_node_reports", "node reports ingested since the daemon started"
        )
        reports.add_metric([], self.reports())
        yield reports
        yield from _builds(fleet)
        yield from _store(fleet)
        outbox = GaugeMetricFamily("netroot_outbox_depth", "events waiting for the broker")
        outbox.add_metric([], fleet.outbox_depth)
        yield outbox
        dropped = CounterMetricFamily(
            "netroot_outbox_dropped", "events the outbox bound dropped (mqtt.outbox_limit)"
        )
        dropped.add_metric([], fleet.outbox_dropped)
        yield dropped
        broker = GaugeMetricFamily(
            "netroot_broker_connected", "1 while connected to the MQTT broker (0: down or disabled)"
        )
        broker.add_metric([], 1.0 if self.connected() else 0.0)
        yield broker


def _nodes(fleet: Fleet) -> Iterator[Metric]:
    nodes = GaugeMetricFamily(
        "netroot_nodes", "known nodes by label and state", labels=["label", "state"]
    )
    for (label, state), n in sorted(fleet.nodes.items()):
        nodes.add_metric([label, state], n)
    yield nodes
    stale = GaugeMetricFamily(
        "netroot_nodes_stale", "stale nodes by what clears them", labels=["label", "action"]
    )
    for (label, action), n in sorted(fleet.stale.items()):
        stale.add_metric([label, action], n)
    yield stale
    seen = HistogramMetricFamily(
        "netroot_node_last_seen_age_seconds", "seconds since each node was last heard from"
    )
    seen.add_metric([], _buckets(fleet.last_seen), fleet.last_seen.total)
    yield seen


def _boots(fleet: Fleet) -> Iterator[Metric]:
    total = HistogramMetricFamily(
        "netroot_node_boot_seconds",
        "each node's last boot as its agent timed it (systemd-analyze total)",
        labels=["label"],
    )
    for label, h in fleet.boot_seconds.items():
        total.add_metric([label], _buckets(h), h.total)
    yield total
    phases = HistogramMetricFamily(
        "netroot_node_boot_phase_seconds",
        "each node's last boot by phase: kernel, initrd (initramfs), userspace",
        labels=["phase"],
    )
    for phase, h in fleet.boot_phase_seconds.items():
        phases.add_metric([phase], _buckets(h), h.total)
    yield phases


def _builds(fleet: Fleet) -> Iterator[Metric]:
    builds = CounterMetricFamily(
        "netroot_builds", "finished builds by label and result", labels=["label", "result"]
    )
    pending = GaugeMetricFamily(
        "netroot_builds_pending", "queued and running builds", labels=["label", "state"]
    )
    for (label, state), n in sorted(fleet.builds.items()):
        (builds if state in FINISHED else pending).add_metric([label, state], n)
    yield builds
    yield pending
    seconds = HistogramMetricFamily(
        "netroot_build_duration_seconds", "duration of finished builds", labels=["label"]
    )
    for label, h in fleet.build_seconds.items():
        seconds.add_metric([label], _buckets(h), h.total)
    yield seconds


def _store(fleet: Fleet) -> Iterator[Metric]:
    activations = CounterMetricFamily(
        "netroot_activations",
        "entries of each label's activation history by action",
        labels=["label", "action"],
    )
    for (label, action), n in sorted(fleet.activations.items()):
        activations.add_metric([label, action], n)
    yield activations
    kept = GaugeMetricFamily("netroot_versions_kept", "versions in the store", labels=["label"])
    for label, n in sorted(fleet.versions.items()):
        kept.add_metric([label], n)
    yield kept


def registry(collector: FleetCollector) -> CollectorRegistry:
    """A private registry holding only the fleet collector."""
    private = CollectorRegistry(auto_describe=False)
    private.register(collector)
    return private


def exposition(private: CollectorRegistry) -> bytes:
    """The text format of one scrape (blocks: run it in a thread)."""
    return generate_latest(private)
