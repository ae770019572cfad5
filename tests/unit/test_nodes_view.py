"""The fleet table of `netroot nodes`: rows, order, filters, summary, relative times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller.cli import nodes_view
from controller.events.fleet import Filters, check_states, fleet, record
from controller.events.node_events import NodeState

NOW = datetime(2026, 12, 4, 8, 0, 0, tzinfo=UTC)
V1 = "20250301T120000.000Z-0000aaaa"
V2 = "20250302T120000.000Z-0000bbbb"
BOOT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def node(mac_tail: str, state: str = "up", label: str | None = "demo", **kw: Any) -> NodeState:
    fields: dict[str, Any] = {"mac": f"52:54:00:00:00:{mac_tail}", "state": state, "label": label}
    if state in ("up", "stale"):
        fields.update(version=V1, boot_id=BOOT_ID)
    if state == "stale":
        fields.update(action="reboot", reason=f"runs {V1}, active is {V2}")
    fields.update(kw)
    return NodeState.model_validate(fields)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "-"),
        (-3, "0s"),  # the node's clock ahead of ours is not negative time
        (0, "0s"),
        (59.9, "59s"),
        (60, "1m"),
        (3599, "59m"),
        (3600, "1h"),
        (3600 + 5 * 60, "1h5m"),
        (86400, "1d"),
        (4 * 86400 + 2 * 3600 + 59, "4d2h"),
    ],
)
def test_durations_show_at_most_two_units(seconds: float | None, shown: str) -> None:
    assert nodes_view.duration(seconds) == shown


def test_times_are_relative_to_now() -> None:
    assert nodes_view.ago(NOW - timedelta(minutes=3, seconds=10), NOW) == "3m ago"
    assert nodes_view.ago(None, NOW) == "-"


def test_a_current_node_row_shows_equal_active_and_its_uptime() -> None:
    up = node(
        "01",
        hostname="n01",
        last_seen=NOW - timedelta(seconds=20),
        booted_at=NOW - timedelta(hours=3, minutes=5),
    )
    (shown,) = fleet([up], {"demo": V1}, Filters())
    assert nodes_view.row(shown, NOW) == [
        "52:54:00:00:00:01", "n01", "demo", V1, "=", "up", "-", "20s ago", "3h5m", "-", "",
    ]  # fmt: skip


def test_a_stale_node_row_shows_the_active_version_it_does_not_run() -> None:
    stale = node("02", "stale", last_seen=NOW - timedelta(minutes=2))
    (shown,) = fleet([stale], {"demo": V2}, Filters())
    cells = nodes_view.row(shown, NOW)
    assert cells[3:8] == [V1, V2, "stale", "reboot", "2m ago"]
    assert cells[-1] == f"runs {V1}, active is {V2}"


def test_missing_data_is_a_dash_in_the_table_and_null_in_json() -> None:
    bare = node("03", "dhcp", label=None)
    (shown,) = fleet([bare], {}, Filters())
    assert nodes_view.row(shown, NOW) == [
        "52:54:00:00:00:03", "-", "-", "-", "-", "dhcp", "-", "-", "-", "-", "",
    ]  # fmt: skip
    data = record(shown)
    for name in ("hostname", "label", "version", "active_version", "action", "last_seen"):
        assert data[name] is None, name
    assert data["boot_duration_s"] is None  # no boot timings reported


def test_only_a_running_node_has_an_uptime() -> None:
    booted = NOW - timedelta(minutes=10)
    lost = node("04", "lost", booted_at=booted, since=NOW - timedelta(minutes=1))
    up = node("05", booted_at=booted)
    assert nodes_view.uptime_s(lost, NOW) is None
    assert nodes_view.uptime_s(up, NOW) == 600.0
    assert nodes_view.row(lost, NOW)[8] == "-"
    assert nodes_view.row(up, NOW)[8] == "10m"


def test_the_active_version_comes_from_the_store_not_the_stored_state() -> None:
    # A lost node's state still names the version active when it was last judged.
    lost = node("06", "lost", version=V1, active_version=V1)
    (shown,) = fleet([lost], {"demo": V2}, Filters())
    assert shown.active_version == V2
    assert record(shown)["active_version"] == V2


def test_rows_go_by_label_then_problems_first_then_mac() -> None:
    nodes = [
        node("09", "up", label="zeta"),
        node("01", "up"),
        node("05", "stale"),
        node("07", "lost"),
        node("02", "lost"),
        node("03", "booting"),
        node("04", "dhcp", label=None),
    ]
    shown = fleet(nodes, {}, Filters())
    assert [(n.label, n.state, n.mac[-2:]) for n in shown] == [
        ("demo", "lost", "02"),
        ("demo", "lost", "07"),
        ("demo", "stale", "05"),
        ("demo", "booting", "03"),
        ("demo", "up", "01"),
        ("zeta", "up", "09"),
        (None, "dhcp", "04"),
    ]


def test_filters_combine_states_as_either_and_label_as_and() -> None:
    nodes = [
        node("01", "up"),
        node("02", "stale"),
        node("03", "lost"),
        node("04", "lost", label="other"),
    ]

    def macs(filters: Filters) -> list[str]:
        return [n.mac[-2:] for n in fleet(nodes, {}, filters)]

    assert macs(Filters(states=frozenset({"stale"}))) == ["02"]
    assert macs(Filters(states=frozenset({"lost"}))) == ["03", "04"]
    assert macs(Filters(states=frozenset({"stale", "lost"}))) == ["03", "02", "04"]
    assert macs(Filters(states=frozenset({"lost"}), label="demo")) == ["03"]
    assert macs(Filters(label="nothere")) == []


def test_the_boot_column_and_record_show_the_agents_systemd_analyze_total() -> None:
    timing = {"kernel_s": 1.8, "initrd_s": 3.25, "userspace_s": 16.0, "total_s": 21.05}
    (shown,) = fleet([node("01", boot_timing=timing)], {}, Filters())
    assert nodes_view.row(shown, NOW)[9] == "21s"
    data = record(shown)
    assert data["boot_duration_s"] == 21.1
    assert data["boot_timing"]["initrd_s"] == 3.25


def test_state_names_are_checked() -> None:
    assert check_states(["stale", "lost"]) == {"stale", "lost"}
    with pytest.raises(ValueError, match=r"^'gone' is not a node state \(allowed: lost, stale"):
        check_states(["up", "gone"])


def test_the_summary_counts_states_problems_first() -> None:
    nodes = [node("01"), node("02"), node("03", "stale"), node("04", "lost"), node("05", "dhcp")]
    assert nodes_view.summary(nodes) == "5 nodes: 1 lost, 1 stale, 1 dhcp, 2 up"
    assert nodes_view.summary(nodes[:1]) == "1 node: 1 up"
    assert nodes_view.summary([]) == "0 nodes"


def test_a_hostname_from_the_network_cannot_drive_the_terminal() -> None:
    hostile = node("01", hostname="evil\x1b]0;owned\x07")
    assert nodes_view.row(hostile, NOW)[1] == "evil\\x1b]0;owned\\x07"
