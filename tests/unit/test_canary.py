"""The canary rollout machine (controller.events.canary) and the canaries' per-MAC menus."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controller.config.models import Config, LabelConfig
from controller.events.canary import (
    Abort,
    AskHealth,
    CanaryError,
    HealthReported,
    NodePassed,
    Promote,
    Revert,
    Rollout,
    Seen,
    Tick,
    check_canaries,
    choose_canaries,
    promotion_failed,
    start,
    transition,
)
from controller.events.node_events import NodeState
from controller.render import boot_target, ipxe_mac_path, pxelinux_mac_path, render_all

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
V1 = "20260301T120000.000Z-0000aaaa"
V2 = "20260302T120000.000Z-0000bbbb"
OLD_BOOT = "00000000-0000-0000-0000-000000000001"
NEW_BOOT = "00000000-0000-0000-0000-000000000002"


def mac(i: int) -> str:
    return f"52:54:00:00:00:{i:02x}"


def node(i: int, state: str = "up", label: str = "demo") -> NodeState:
    action = "reboot" if state == "stale" else None
    return NodeState(mac=mac(i), state=state, label=label, version=V1, boot_id=OLD_BOOT,
                     action=action)  # fmt: skip


def rollout(count: int = 3) -> Rollout:
    return start(
        rollout_id="canary-1",
        label="demo",
        version=V2,
        previous=V1,
        reason="cli",
        at=T0,
        timeout_s=600,
        canaries=[node(i) for i in range(count)],
    )


# --- choosing -----------------------------------------------------------------


def test_canaries_are_the_first_live_nodes_of_the_label_by_mac_whatever_the_order() -> None:
    fleet = [node(i) for i in (7, 3, 9, 1)] + [
        node(0, "lost"),
        node(2, "booting"),
        node(4, label="other"),
        node(5, "stale"),
    ]
    assert choose_canaries(fleet, "demo", 3) == (mac(1), mac(3), mac(5))
    assert choose_canaries(reversed(fleet), "demo", 3) == (mac(1), mac(3), mac(5))


def test_too_few_live_nodes_or_a_mac_that_is_not_one_is_refused_with_the_reason() -> None:
    fleet = [node(1), node(2, "lost")]
    with pytest.raises(CanaryError, match="has 1 live node"):
        choose_canaries(fleet, "demo", 2)
    with pytest.raises(CanaryError, match=f"{mac(2)} is not a live node of label demo"):
        check_canaries(fleet, "demo", [mac(1), mac(2)])
    assert check_canaries(fleet, "demo", [mac(1), mac(1)]) == (mac(1),)


# --- the machine --------------------------------------------------------------


def seen(i: int, version: str, boot: str = NEW_BOOT, at: datetime = T0) -> Seen:
    return Seen(at=at, mac=mac(i), version=version, boot_id=boot)


def health(i: int, code: int, output: str = "running") -> HealthReported:
    return HealthReported(at=T0, mac=mac(i), version=V2, exit_code=code, output=output)


def test_every_canary_booting_the_version_and_passing_its_check_promotes_it() -> None:
    r = rollout()
    r, effects = transition(r, seen(0, V1, OLD_BOOT))  # the boot from before: wait
    assert effects == []
    for i in range(3):
        r, effects = transition(r, seen(i, V2))
        assert effects == [AskHealth(mac(i), NEW_BOOT)]
        r, effects = transition(r, seen(i, V2))  # a heartbeat: asked once
        assert effects == []
    r, effects = transition(r, health(0, 0))
    assert effects == [NodePassed(mac(0), "running")]
    r, _ = transition(r, health(1, 0))
    r, effects = transition(r, health(2, 0))
    assert effects == [NodePassed(mac(2), "running"), Promote()]
    assert r.phase == "passed"
    assert transition(r, Tick(at=T0 + timedelta(days=1))) == (r, [])  # finished: stays


def test_a_canary_without_an_answer_is_asked_again_on_a_later_report_not_more_often() -> None:
    r, effects = transition(rollout(), seen(0, V2))
    assert effects == [AskHealth(mac(0), NEW_BOOT)]
    r, effects = transition(r, seen(0, V2, at=T0 + timedelta(seconds=29)))
    assert effects == []
    r, effects = transition(r, seen(0, V2, at=T0 + timedelta(seconds=30)))  # the timing report
    assert effects == [AskHealth(mac(0), NEW_BOOT)]
    r, effects = transition(r, health(0, 0))
    assert effects == [NodePassed(mac(0), "running")]
    assert transition(r, seen(0, V2, at=T0 + timedelta(seconds=90))) == (r, [])


def test_a_failing_check_fails_the_rollout_naming_mac_check_and_output_tail() -> None:
    r, _ = transition(rollout(), seen(1, V2))
    r, effects = transition(r, health(1, 1, "x" * 5000 + "degraded"))
    assert r.phase == "failed"
    [revert] = effects
    assert isinstance(revert, Revert)
    failure = revert.failure
    assert (failure.check, failure.mac, failure.exit_code) == ("health", mac(1), 1)
    assert failure.output_tail.endswith("degraded") and len(failure.output_tail) == 1024
    assert r.failure == failure


def test_a_canary_that_boots_another_version_fails_the_rollout() -> None:
    r, effects = transition(rollout(), seen(2, V1, NEW_BOOT))
    assert r.phase == "failed"
    assert isinstance(effects[0], Revert)
    assert effects[0].failure.check == "version"
    assert f"booted {V1} instead of {V2}" in effects[0].failure.detail


def test_the_deadline_fails_the_rollout_naming_the_first_canary_not_passed() -> None:
    r, _ = transition(rollout(), seen(0, V2))
    r, _ = transition(r, health(0, 0))
    r, _ = transition(r, seen(1, V2))
    assert transition(r, Tick(at=T0 + timedelta(seconds=599))) == (r, [])
    r, effects = transition(r, Tick(at=T0 + timedelta(seconds=600)))
    assert isinstance(effects[0], Revert)
    assert effects[0].failure.check == "timeout"
    assert effects[0].failure.mac == mac(1)
    assert "never answered `health`" in effects[0].failure.detail


def test_answers_nobody_asked_for_change_nothing() -> None:
    r = rollout()
    assert transition(r, health(0, 1)) == (r, [])  # not asked yet
    stranger = HealthReported(at=T0, mac=mac(9), version=V2, exit_code=1, output="")
    assert transition(r, stranger) == (r, [])


def test_a_restart_aborts_and_a_failed_promotion_reverts() -> None:
    r, effects = transition(rollout(), Abort(at=T0, check="restart", detail="restarted"))
    assert r.phase == "failed" and isinstance(effects[0], Revert)
    assert effects[0].failure.check == "restart"
    passed = rollout(1)
    passed, _ = transition(passed, seen(0, V2))
    passed, _ = transition(passed, health(0, 0))
    failed, effects = promotion_failed(passed, "disk full")
    assert failed.phase == "failed" and effects[0] == Revert(failed.failure)  # type: ignore[arg-type]


def test_a_rollout_round_trips_through_its_json() -> None:
    r, _ = transition(rollout(), seen(0, V2))
    assert Rollout.model_validate_json(r.model_dump_json()) == r


# --- the canaries' menus ----------------------------------------------------------


def test_a_pinned_mac_boots_the_canary_version_and_the_others_the_active_one() -> None:
    config = Config(labels={"demo": LabelConfig(recipe="demo.toml")}, server="10.0.0.1")
    active, canary = boot_target(config, "demo", V1), boot_target(config, "demo", V2)
    files = render_all([active], default="demo", macs={mac(2): "demo"}, pins={mac(1): canary})
    assert f"netroot.version={V2}" in files[pxelinux_mac_path(mac(1))]
    assert f"netroot.version={V2}" in files[ipxe_mac_path(mac(1))]
    assert f"netroot.version={V1}" in files[pxelinux_mac_path(mac(2))]
    assert f"netroot.version={V2}" not in files["pxelinux.cfg/default"]
