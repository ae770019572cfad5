"""The pure liveness decisions: silence, expiry, last_seen staleness, held wills, resync pace."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from controller.events.liveness import (
    WILL_WINDOW_S,
    HeldWill,
    Resync,
    WillGate,
    expired,
    in_use,
    last_seen_due,
    next_check,
    silent,
)
from controller.events.node_events import NodeState

MAC = "52:54:00:00:03:01"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
V1 = "20250301T120000.000Z-0000aaaa"
V2 = "20250302T120000.000Z-0000bbbb"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def node(state: str = "up", seen: float = 0, version: str = V1) -> NodeState:
    return NodeState.model_validate(
        {
            "mac": MAC,
            "state": state,
            "label": "demo",
            "version": version,
            "action": "reboot" if state == "stale" else None,
            "last_seen": at(seen),
            "since": at(seen),
        }
    )


def test_a_running_node_is_silent_only_after_the_timeout_of_listening() -> None:
    up = node(seen=0)
    assert not silent(up, now=at(180), timeout=180, listening_since=at(0))
    assert silent(up, now=at(181), timeout=180, listening_since=at(0))
    assert silent(node("stale"), now=at(181), timeout=180, listening_since=at(0))
    # Time we were cut off from the broker does not count against the node.
    assert not silent(up, now=at(181), timeout=180, listening_since=at(100))
    assert not silent(up, now=at(10_000), timeout=180, listening_since=None)
    assert not silent(up, now=at(10_000), timeout=None, listening_since=at(0))
    for phase in ("lost", "dhcp", "booting"):
        assert not silent(node(phase), now=at(10_000), timeout=180, listening_since=at(0))


def test_only_idle_unconfigured_nodes_expire() -> None:
    week = 7 * 86400
    assert expired(node("lost"), now=at(week + 1), expiry=week, configured=False)
    assert expired(node("booting"), now=at(week + 1), expiry=week, configured=False)
    assert not expired(node("lost"), now=at(week), expiry=week, configured=False)
    assert not expired(node("lost"), now=at(week + 1), expiry=week, configured=True)
    # A running node is lost by silence first: gc must keep seeing what it runs.
    assert not expired(node("up"), now=at(week + 1), expiry=week, configured=False)


def test_last_seen_is_republished_at_a_bounded_staleness() -> None:
    assert not last_seen_due(node(seen=299), at(0), 300)
    assert last_seen_due(node(seen=300), at(0), 300)
    assert last_seen_due(node(seen=1), None, 300)


def test_no_liveness_verdict_comes_before_the_next_check() -> None:
    rng = random.Random(11)  # noqa: S311 (a reproducible sample, not a secret)
    week = 7 * 86400
    for _ in range(3000):
        state = rng.choice(["up", "stale", "lost", "dhcp", "booting", "unknown"])
        base = node(state, seen=rng.uniform(0, 1000)) if state != "unknown" else node("lost")
        if state == "unknown":
            base = base.model_copy(update={"state": "unknown", "last_seen": None, "since": None})
        elif rng.random() < 0.2:
            base = base.model_copy(update={"last_seen": None})
        published = rng.choice([None, at(rng.uniform(0, 1000))])
        timeout = rng.choice([None, 90.0, 180.0])
        expiry, refresh = rng.choice([300.0, week]), rng.choice([60.0, 600.0])
        configured = rng.random() < 0.2
        now = at(rng.uniform(0, 2000))
        listening = rng.choice([None, at(rng.uniform(0, 2000))])
        first = next_check(
            base,
            published=published,
            now=now,
            timeout=timeout,
            expiry=expiry,
            refresh=refresh,
            configured=configured,
            listening_since=listening,
        )
        for later in (0, 1, 50, 500, 5000, 2 * week):
            when = now + timedelta(seconds=later)
            # Listening may start again later (a reconnect), or only after now: never earlier.
            lo = listening if listening is not None else now
            start = (
                rng.choice([listening, lo + (when - lo) * rng.random()]) if when > lo else listening
            )
            verdict = (
                silent(base, now=when, timeout=timeout, listening_since=start)
                or expired(base, now=when, expiry=expiry, configured=configured)
                or last_seen_due(base, published, refresh)
            )
            if verdict:
                assert first is not None
                assert first <= when


def test_the_next_check_is_when_the_verdict_comes() -> None:
    def plan(
        state: NodeState,
        timeout: float | None = 90,
        listening: float | None = 0,
        published: float = 100,
    ) -> datetime | None:
        return next_check(
            state,
            published=at(published),
            now=at(120),
            timeout=timeout,
            expiry=300,
            refresh=60,
            configured=False,
            listening_since=None if listening is None else at(listening),
        )

    up = node(seen=100)
    assert plan(up) == at(190)
    # Listening since later (a reconnect), or not yet: silence counts from then.
    assert plan(up, listening=150) == at(240)
    assert plan(up, listening=None) == at(210)
    assert plan(up, timeout=None) is None
    assert plan(node("lost", seen=100)) == at(400)  # expiry
    # A last_seen the retained state lags by the refresh: due at once.
    assert plan(up, published=30) == at(120)


def test_gc_counts_only_versions_the_node_could_have_booted() -> None:
    history = [(V1, at(10)), (V2, at(100))]
    assert in_use([node(seen=50, version=V1)], "demo", history) == {V1}
    # V2 became active only after the node's last report: it cannot run it.
    assert in_use([node(seen=50, version=V2)], "demo", history) == set()
    never_active = "20250101T000000.000Z-00000000"
    assert in_use([node(seen=500, version=never_active)], "demo", history) == set()
    assert in_use([node("lost", seen=500)], "demo", history) == set()
    assert in_use([node(seen=50, version=V2)], "demo", None) == {V2}  # no history to check


def will(received: float, mac: str = MAC) -> HeldWill:
    return HeldWill(mac, None, "agent went offline", received, at(received))


def test_a_lone_will_is_believed_after_the_window() -> None:
    gate = WillGate(grace=30)
    gate.offline(will(100))
    assert gate.due(100 + WILL_WINDOW_S / 2, connected=True).lost == []
    verdicts = gate.due(100 + WILL_WINDOW_S, connected=True)
    assert [w.mac for w in verdicts.lost] == [MAC]
    assert gate.held == {}


def test_a_will_just_before_our_own_disconnect_waits_for_a_report() -> None:
    gate = WillGate(grace=30)
    gate.offline(will(100))
    gate.link_changed(100.2)  # the broker went down right after firing the wills
    assert gate.due(110, connected=False) == gate.due(110, connected=False)
    assert gate.due(110, connected=False).ask == []  # nobody to ask while away
    gate.link_changed(120)  # back
    verdicts = gate.due(120.1, connected=True)
    assert (verdicts.lost, verdicts.ask) == ([], [MAC])
    gate.asked(MAC, 120.1)
    assert gate.due(150, connected=True).lost == []
    # It answered: the will is moot.
    gate.spoke(MAC)
    assert gate.due(200, connected=True).lost == []


def test_a_held_will_without_an_answer_is_believed_after_the_grace() -> None:
    gate = WillGate(grace=30)
    gate.link_changed(99)  # our reconnect; the session hands us a queued will
    gate.offline(will(100))
    assert gate.due(104, connected=True).ask == [MAC]
    gate.asked(MAC, 104)
    assert gate.due(133.9, connected=True).lost == []
    assert [w.mac for w in gate.due(134, connected=True).lost] == [MAC]


def test_wills_in_a_mass_are_held_even_without_a_link_change() -> None:
    gate = WillGate(grace=30, mass=3)
    macs = [f"52:54:00:00:03:{i:02x}" for i in range(3)]
    for i, mac in enumerate(macs):
        gate.offline(will(100 + i * 0.1, mac))
    verdicts = gate.due(110, connected=True)
    assert (verdicts.lost, sorted(verdicts.ask)) == ([], macs)
    lone = WillGate(grace=30, mass=3)
    lone.offline(will(100, macs[0]))
    lone.offline(will(200, macs[1]))  # far apart: two nodes dying, not a broker
    assert len(lone.due(210, connected=True).lost) == 2


def test_resync_sends_at_most_rate_per_second_in_order() -> None:
    resync = Resync(rate=10)
    resync.add(f"m{i:02}" for i in range(25))
    first = resync.take(0.0)
    assert first == [f"m{i:02}" for i in range(10)]  # one second's worth at once
    assert resync.take(0.05) == []
    assert len(resync.take(0.5)) == 5
    resync.add(["urgent"], first=True)
    assert resync.take(0.75) == ["urgent", "m15"]
    assert len(resync.take(100.0)) == 9  # what is left; a long idle never buys a burst
    assert resync.queue == {}
