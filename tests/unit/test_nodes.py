"""The node state machine, told as the stories an administrator lives through."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from controller.events.node_events import (
    BootTiming,
    Drift,
    DriftEntry,
    NodeDiff,
    NodeState,
    RootMount,
)
from controller.events.node_inputs import (
    Activation,
    Booted,
    DhcpLease,
    DiffListed,
    Heartbeat,
    LiveEdit,
    NodeInput,
    Offline,
    Policy,
    RemountResult,
    StaleHandle,
    report_input,
)
from controller.events.node_messages import NodeReport
from controller.events.nodes import (
    Effect,
    PublishEvent,
    PublishState,
    SendCommand,
    transition,
    versions_in_use,
)

MAC = "52:54:00:ab:cd:ef"
LABEL = "debian12"
V1 = "20250101T000000.000Z-11111111"
V2 = "20250201T000000.000Z-22222222"
V3 = "20250301T000000.000Z-33333333"
BOOT_A = "0f8fad5b-d9cb-469f-a165-70867728950e"
BOOT_B = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
IP = "10.0.2.15"
T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
AUTO_ALL = Policy(auto_remount=True, auto_reboot=True)
HANDS_OFF = Policy(auto_remount=False, auto_reboot=False)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def event_kinds(effects: list[Effect]) -> list[str]:
    events = [e for e in effects if isinstance(e, PublishEvent)]
    return [e.event_type.removeprefix("org.netroot.node.") for e in events]


def commands(effects: list[Effect]) -> list[SendCommand]:
    return [e for e in effects if isinstance(e, SendCommand)]


def published_state(effects: list[Effect]) -> NodeState | None:
    states = [e.state for e in effects if isinstance(e, PublishState)]
    assert len(states) <= 1
    return states[0] if states else None


def booted(
    version: str, active: str | None, boot_id: str = BOOT_A, t: float = 0, **kw: object
) -> Booted:
    return Booted(
        at=at(t),
        label=LABEL,
        version=version,
        boot_id=boot_id,
        active_version=active,
        kernel="6.1.0-18-amd64",
        ip=IP,
        root=RootMount(fstype="overlay", source="overlay", lower="10.0.2.2:/srv/netroot/debian12"),
        **kw,  # type: ignore[arg-type]
    )


def heartbeat(version: str, active: str | None, t: float = 0) -> Heartbeat:
    return Heartbeat(at=at(t), label=LABEL, version=version, active_version=active)


def up_on(version: str, active: str | None = None) -> NodeState:
    """A node that booted `version` while `active` (default: the same) was active."""
    state, _ = transition(NodeState(mac=MAC), booted(version, active or version))
    assert state.state == "up"
    return state


def stale_on(version: str, active: str) -> NodeState:
    state, _ = transition(up_on(version), Activation(at=at(10), label=LABEL, version=active))
    assert (state.state, state.action) == ("stale", "reboot")
    return state


def step(state: NodeState, event: NodeInput) -> tuple[NodeState, list[Effect]]:
    """transition, plus what must hold after any step."""
    new, effects = transition(state, event)
    for e in effects:
        if isinstance(e, PublishEvent):
            # Every event speaks for this node and reports the state it leaves it in.
            assert e.data.mac == state.mac
            assert e.data.state == new.state
    if published_state(effects) is not None:
        assert published_state(effects) == new
    return new, effects


# --- the main story -----------------------------------------------------------


def test_boot_activation_reboot_and_loss_of_a_node() -> None:
    node = NodeState(mac=MAC)

    node, fx = step(node, DhcpLease(at=at(0), ip=IP, firmware=True))
    assert node.state == "dhcp"
    assert event_kinds(fx) == ["dhcp"]

    node, fx = step(node, DhcpLease(at=at(5), ip=IP, firmware=False))
    assert node.state == "booting"
    assert event_kinds(fx) == ["dhcp"]

    node, fx = step(node, booted(V1, V1, t=30))
    assert (node.state, node.version, node.boot_id) == ("up", V1, BOOT_A)
    assert event_kinds(fx) == ["booted", "current"]
    assert published_state(fx) == node

    node, fx = step(node, Activation(at=at(100), label=LABEL, version=V2))
    assert (node.state, node.action, node.active_version) == ("stale", "reboot", V2)
    assert node.reason == f"runs {V1}, active is {V2}"
    assert event_kinds(fx) == ["stale"]
    stale = fx[0]
    assert isinstance(stale, PublishEvent)
    assert stale.data.model_dump()["commanded"] is False
    assert commands(fx) == []  # reboots are only sent when the label asks for it

    node, fx = step(node, heartbeat(V1, V2, t=130))
    assert (node.state, node.action) == ("stale", "reboot")
    assert fx == []

    node, fx = step(node, DhcpLease(at=at(200), ip=IP, firmware=True))
    assert (node.state, node.version) == ("dhcp", None)

    node, fx = step(node, booted(V2, V2, boot_id=BOOT_B, t=230))
    assert (node.state, node.version, node.action) == ("up", V2, None)
    assert event_kinds(fx) == ["booted", "current"]

    node, fx = step(node, Offline(at=at(300), boot_id=BOOT_B, reason="will"))
    assert (node.state, node.reason) == ("lost", "will")
    assert event_kinds(fx) == ["lost"]
    assert node.since == at(300)


def test_auto_reboot_policy_sends_one_reboot_for_the_running_boot() -> None:
    node, fx = step(up_on(V1), Activation(at=at(10), label=LABEL, version=V2, policy=AUTO_ALL))
    [cmd] = commands(fx)
    assert (cmd.command, cmd.boot_id, cmd.version) == ("reboot", BOOT_A, V2)
    message = cmd.message("cmd-1")
    assert (message.command, message.id, message.boot_id) == ("reboot", "cmd-1", BOOT_A)
    assert isinstance(fx[-1], SendCommand)  # the state that explains it goes out first

    # A second activation while it still has to reboot does not send another.
    node, fx = step(node, Activation(at=at(20), label=LABEL, version=V3, policy=AUTO_ALL))
    assert (node.state, node.active_version) == ("stale", V3)
    assert commands(fx) == []
    assert event_kinds(fx) == []
    assert published_state(fx) == node  # the new target is still visible


def test_boot_on_an_outdated_version_is_stale_right_away() -> None:
    node, fx = step(NodeState(mac=MAC), booted(V1, V2))
    assert (node.state, node.action) == ("stale", "reboot")
    assert event_kinds(fx) == ["booted", "stale"]


def test_rollback_to_the_version_a_node_runs_makes_it_current() -> None:
    node, fx = step(stale_on(V1, V2), Activation(at=at(20), label=LABEL, version=V1))
    assert (node.state, node.action, node.reason) == ("up", None, "")
    assert event_kinds(fx) == ["current"]


def test_reporting_the_active_version_leaves_stale() -> None:
    node, fx = step(stale_on(V1, V2), heartbeat(V2, V2, t=30))
    assert node.state == "up"
    assert event_kinds(fx) == ["current"]


def test_heartbeat_that_changes_nothing_publishes_nothing() -> None:
    node = up_on(V1)
    new, fx = step(node, heartbeat(V1, V1, t=60))
    assert fx == []
    assert new.last_seen == at(60)
    assert new.since == node.since


def test_heartbeat_discovers_a_missed_activation() -> None:
    node, fx = step(up_on(V1), heartbeat(V1, V2, t=60))
    assert (node.state, node.action) == ("stale", "reboot")
    assert event_kinds(fx) == ["stale"]


# --- remount story ------------------------------------------------------------


def test_live_edit_remount_story() -> None:
    node = up_on(V2)
    node, fx = step(node, LiveEdit(at=at(10), label=LABEL, version=V2))
    assert (node.state, node.action) == ("stale", "remount")
    assert node.reason == f"{V2} was changed in place"
    assert event_kinds(fx) == ["stale", "remount_requested"]
    [cmd] = commands(fx)
    assert (cmd.command, cmd.boot_id) == ("remount", BOOT_A)

    # Still on the active version, but the tree under it changed: a heartbeat is not enough.
    node, fx = step(node, heartbeat(V2, V2, t=20))
    assert (node.state, node.action) == ("stale", "remount")
    assert fx == []

    done = RemountResult(at=at(30), ok=True, label=LABEL, version=V2, active_version=V2)
    node, fx = step(node, done)
    assert (node.state, node.action) == ("up", None)
    assert event_kinds(fx) == ["remounted", "current"]


def test_live_edit_without_auto_remount_only_announces() -> None:
    node, fx = step(up_on(V2), LiveEdit(at=at(10), label=LABEL, version=V2, policy=HANDS_OFF))
    assert (node.state, node.action) == ("stale", "remount")
    assert event_kinds(fx) == ["stale"]
    assert commands(fx) == []


@pytest.mark.parametrize(
    "edit",
    [
        LiveEdit(at=at(10), label=LABEL, version=V1),
        LiveEdit(at=at(10), label="rocky9", version=V2),
    ],
)
def test_live_edit_of_another_version_or_label_leaves_the_node_alone(edit: LiveEdit) -> None:
    node = up_on(V2)
    assert transition(node, edit) == (node, [])


def test_live_edit_does_not_downgrade_a_pending_reboot() -> None:
    node = stale_on(V1, V2)
    new, fx = step(node, LiveEdit(at=at(20), label=LABEL, version=V1))
    assert (new.state, new.action) == ("stale", "reboot")
    assert event_kinds(fx) == []
    assert commands(fx) == []


def test_failed_remount_escalates_to_reboot_until_the_node_boots_again() -> None:
    node, _ = step(up_on(V2), LiveEdit(at=at(10), label=LABEL, version=V2))
    failed = RemountResult(
        at=at(20),
        ok=False,
        label=LABEL,
        version=V2,
        active_version=V2,
        error="device busy",
        policy=AUTO_ALL,
    )
    node, fx = step(node, failed)
    assert (node.state, node.action) == ("stale", "reboot")
    assert node.reason == "remount failed: device busy"
    assert event_kinds(fx) == ["stale"]
    assert [c.command for c in commands(fx)] == ["reboot"]

    # It runs the active version, but its root is broken: heartbeats do not clear it.
    node, fx = step(node, heartbeat(V2, V2, t=30))
    assert (node.state, node.action) == ("stale", "reboot")

    node, fx = step(node, booted(V2, V2, boot_id=BOOT_B, t=90))
    assert node.state == "up"
    assert event_kinds(fx) == ["booted", "current"]


def test_agent_restart_is_not_a_reboot() -> None:
    node, _ = step(up_on(V2), LiveEdit(at=at(10), label=LABEL, version=V2))
    node, fx = step(node, booted(V2, V2, boot_id=BOOT_A, t=20))  # same boot id
    assert (node.state, node.action) == ("stale", "remount")
    assert "booted" not in event_kinds(fx)


def test_stale_file_handle_asks_for_a_remount_on_the_active_version() -> None:
    stale = StaleHandle(at=at(10), label=LABEL, version=V2, active_version=V2)
    node, fx = step(up_on(V2), stale)
    assert (node.state, node.action, node.reason) == ("stale", "remount", "stale file handle on /")
    assert event_kinds(fx) == ["stale", "remount_requested"]

    # Reported again before the remount ran: no second command.
    node, fx = step(node, StaleHandle(at=at(40), label=LABEL, version=V2, active_version=V2))
    assert fx == []


def test_stale_file_handle_on_an_outdated_version_needs_a_reboot() -> None:
    stale = StaleHandle(at=at(10), label=LABEL, version=V1, active_version=V2)
    node, fx = step(up_on(V1), stale)
    assert (node.state, node.action) == ("stale", "reboot")
    assert commands(fx) == []  # a remount would mount V2's tree under V1's kernel


def test_unsolicited_failed_remount_changes_nothing_visible() -> None:
    node = up_on(V2)
    failed = RemountResult(at=at(5), ok=False, label=LABEL, version=V2, active_version=V2)
    new, fx = step(node, failed)
    assert new.state == "up"
    assert fx == []


# --- activation scope and loss ------------------------------------------------


def test_activation_of_another_label_or_for_non_running_nodes_does_nothing() -> None:
    node = up_on(V1)
    assert transition(node, Activation(at=at(5), label="rocky9", version=V2)) == (node, [])
    for phase in ("unknown", "dhcp", "booting", "lost"):
        other = NodeState(mac=MAC, state=phase, label=LABEL, version=V1)
        assert transition(other, Activation(at=at(5), label=LABEL, version=V2)) == (other, [])


def test_a_late_will_from_the_previous_boot_does_not_lose_a_rebooting_node() -> None:
    node, _ = step(up_on(V1), DhcpLease(at=at(50), ip=IP, firmware=True))
    assert transition(node, Offline(at=at(60), boot_id=BOOT_A)) == (node, [])

    node = up_on(V1)  # booted as BOOT_A
    assert transition(node, Offline(at=at(60), boot_id=BOOT_B)) == (node, [])


def test_lost_node_that_speaks_again_is_judged_on_what_it_runs() -> None:
    node, _ = step(up_on(V1), Offline(at=at(10), boot_id=BOOT_A))
    again, fx = step(node, heartbeat(V1, V1, t=20))
    assert again.state == "up"
    assert event_kinds(fx) == ["current"]
    outdated, fx = step(node, heartbeat(V1, V2, t=20))
    assert (outdated.state, outdated.action) == ("stale", "reboot")
    assert event_kinds(fx) == ["stale"]


def test_dhcp_renewal_of_a_running_node_is_silent_unless_the_address_changes() -> None:
    node = up_on(V1)
    same, fx = step(node, DhcpLease(at=at(600), ip=IP, firmware=False))
    assert same.state == "up"
    assert fx == []
    moved, fx = step(node, DhcpLease(at=at(600), ip="10.0.2.16", firmware=False))
    assert (moved.state, str(moved.ip)) == ("up", "10.0.2.16")
    assert event_kinds(fx) == ["dhcp"]


def test_the_boot_time_is_kept_while_the_boot_lasts_and_cleared_by_the_next() -> None:
    node, _ = step(NodeState(mac=MAC), booted(V1, V1, t=5))
    assert node.booted_at == at(5)
    node, _ = step(node, heartbeat(V1, V1, t=60))
    node, _ = step(node, booted(V1, V1, boot_id=BOOT_A, t=90))  # the agent restarted
    assert node.booted_at == at(5)
    node, _ = step(node, DhcpLease(at=at(120), ip=IP, firmware=True))  # a reboot begins
    assert node.booted_at is None
    node, _ = step(node, booted(V1, V1, boot_id=BOOT_B, t=150))
    assert node.booted_at == at(150)


def test_the_hostname_of_a_lease_is_kept_until_another_lease_names_one() -> None:
    node, _ = step(NodeState(mac=MAC), DhcpLease(at=at(0), ip=IP, firmware=False, hostname="n01"))
    assert node.hostname == "n01"
    node, _ = step(node, DhcpLease(at=at(10), ip=IP, firmware=True))  # firmware sends none
    assert node.hostname == "n01"
    node, _ = step(node, DhcpLease(at=at(20), ip=IP, firmware=False, hostname="n01b"))
    assert node.hostname == "n01b"


# --- boot timings and drift (issue 10) ------------------------------------------

TIMING = BootTiming(kernel_s=1.5, initrd_s=4.0, userspace_s=20.25, total_s=25.75)
DRIFT = Drift(
    entries=(DriftEntry(change="added", type="file", size=2, path="/root/drift.txt"),),
    added=1,
    modified=0,
    deleted=0,
    truncated=False,
)


def test_boot_timings_follow_the_boot_report_and_go_with_the_boot() -> None:
    node, _ = step(NodeState(mac=MAC), booted(V1, V1, t=5))
    assert node.boot_timing is None  # the boot report comes before the boot is over
    node, fx = step(node, booted(V1, V1, t=40, boot_timing=TIMING))  # the timing report
    assert node.boot_timing == TIMING and node.booted_at == at(5)
    assert event_kinds(fx) == ["boot_timing"]
    event = next(e.data for e in fx if isinstance(e, PublishEvent))
    assert event.model_dump(include={"boot_id", "boot_timing"}) == {
        "boot_id": BOOT_A,
        "boot_timing": TIMING.model_dump(),
    }
    assert published_state(fx) == node
    node, fx = step(node, booted(V1, V1, t=50, boot_timing=TIMING))  # sent again: nothing new
    assert event_kinds(fx) == [] and published_state(fx) is None
    node, _ = step(node, booted(V1, V1, t=60))  # a later boot report without: kept
    assert node.boot_timing == TIMING
    node, _ = step(node, DhcpLease(at=at(120), ip=IP, firmware=True))  # a reboot begins
    assert node.boot_timing is None
    node, _ = step(node, booted(V1, V1, boot_id=BOOT_A, t=130, boot_timing=TIMING))
    node, fx = step(node, booted(V1, V1, boot_id=BOOT_B, t=200))  # without the DHCP lease
    assert node.boot_timing is None and event_kinds(fx) == ["booted"]


def test_the_timing_report_of_a_boot_never_reported_is_its_boot_report() -> None:
    node, fx = step(NodeState(mac=MAC), booted(V1, V1, t=40, boot_timing=TIMING))
    assert (node.state, node.boot_id, node.boot_timing) == ("up", BOOT_A, TIMING)
    assert event_kinds(fx) == ["booted", "current"]
    booted_event = next(e.data for e in fx if isinstance(e, PublishEvent))
    assert booted_event.model_dump()["boot_timing"] == TIMING.model_dump()


def test_a_diff_answer_is_announced_and_counts_as_a_sign_of_life() -> None:
    node = up_on(V1)
    answer = DiffListed(at=at(30), label=LABEL, version=V1, active_version=V1,
                        boot_id=BOOT_A, command_id="c-1", diff=DRIFT)  # fmt: skip
    new, fx = step(node, answer)
    assert event_kinds(fx) == ["diff"]
    data = fx[0].data if isinstance(fx[0], PublishEvent) else None
    assert isinstance(data, NodeDiff)
    assert (data.diff, data.command_id, data.boot_id, data.state) == (DRIFT, "c-1", BOOT_A, "up")
    assert new.last_seen == at(30) and published_state(fx) is None
    # the answer of a node on an outdated version is also what tells it is stale
    new, fx = step(node, DiffListed(at=at(40), label=LABEL, version=V1, active_version=V2,
                                    boot_id=BOOT_A, command_id=None, diff=DRIFT))  # fmt: skip
    assert event_kinds(fx) == ["diff", "stale"] and new.state == "stale"


# --- agent reports ------------------------------------------------------------


def test_report_input_maps_each_report_kind() -> None:
    def mapped(**fields: object) -> NodeInput:
        report = NodeReport.model_validate({"mac": MAC, "label": LABEL, "version": V1, **fields})
        return report_input(report, at=at(0), active_version=V1, policy=AUTO_ALL)

    boot = mapped(kind="boot", boot_id=BOOT_A)
    assert isinstance(boot, Booted)
    assert boot.policy == AUTO_ALL
    assert isinstance(mapped(kind="heartbeat"), Heartbeat)
    assert isinstance(mapped(kind="heartbeat", stale_handle=True), StaleHandle)
    result = mapped(kind="remount_result", ok=False, error="busy")
    assert isinstance(result, RemountResult)
    assert (result.ok, result.error) == (False, "busy")
    offline = mapped(kind="offline", boot_id=BOOT_A)
    assert isinstance(offline, Offline)
    assert offline.boot_id == BOOT_A
    timed = mapped(kind="timing", boot_id=BOOT_A, boot_timing=TIMING.model_dump())
    assert isinstance(timed, Booted) and timed.boot_timing == TIMING
    listed = mapped(kind="diff_result", diff=DRIFT.model_dump(), command_id="c-9")
    assert isinstance(listed, DiffListed)
    assert (listed.diff, listed.command_id) == (DRIFT, "c-9")


# --- garbage-collection guard -------------------------------------------------


def test_versions_in_use_counts_live_nodes_of_the_label_only() -> None:
    nodes = [
        NodeState(mac="52:54:00:00:00:01", state="up", label=LABEL, version=V1),
        NodeState(mac="52:54:00:00:00:02", state="stale", action="reboot", label=LABEL, version=V2),
        NodeState(mac="52:54:00:00:00:03", state="lost", label=LABEL, version=V3),
        NodeState(mac="52:54:00:00:00:04", state="up", label="rocky9", version=V3),
        NodeState(mac="52:54:00:00:00:05", state="dhcp", label=LABEL),
    ]
    assert versions_in_use(nodes, LABEL) == {V1, V2}
    assert versions_in_use(nodes, "rocky9") == {V3}
    assert versions_in_use([], LABEL) == set()


def test_gc_story_v1_protected_while_a_node_runs_it() -> None:
    node = stale_on(V1, V2)
    assert V1 in versions_in_use([node], LABEL)
    node, _ = step(node, booted(V2, V2, boot_id=BOOT_B, t=60))
    assert versions_in_use([node], LABEL) == {V2}


# --- any order of inputs ------------------------------------------------------


def random_input(rng: random.Random, t: float) -> NodeInput:
    version = rng.choice([V1, V2, V3])
    active = rng.choice([V1, V2, V3, None])
    policy = rng.choice([AUTO_ALL, HANDS_OFF, Policy()])
    label = rng.choice([LABEL, LABEL, "rocky9"])
    boot = rng.choice([BOOT_A, BOOT_B])
    choices: list[NodeInput] = [
        DhcpLease(at=at(t), ip=IP, firmware=rng.random() < 0.5),
        booted(version, active, boot_id=boot, t=t, policy=policy),
        booted(version, active, boot_id=boot, t=t, policy=policy, boot_timing=TIMING),
        DiffListed(
            at=at(t),
            label=label,
            version=version,
            active_version=active,
            policy=policy,
            boot_id=boot,
            command_id="c",
            diff=DRIFT,
        ),
        Heartbeat(at=at(t), label=label, version=version, active_version=active, policy=policy),
        RemountResult(
            at=at(t),
            ok=rng.random() < 0.5,
            label=label,
            version=version,
            active_version=active,
            policy=policy,
        ),
        StaleHandle(at=at(t), label=label, version=version, active_version=active, policy=policy),
        Offline(at=at(t), boot_id=rng.choice([boot, None])),
        Activation(at=at(t), label=label, version=version, policy=policy),
        LiveEdit(at=at(t), label=label, version=version, policy=policy),
    ]
    return rng.choice(choices)


def test_any_sequence_of_inputs_keeps_the_state_consistent() -> None:
    rng = random.Random(5)  # noqa: S311 - reproducible fuzzing, nothing secret
    node = NodeState(mac=MAC)
    for i in range(3000):
        old = node
        node, fx = step(node, random_input(rng, float(i)))
        # The retained state goes out exactly when something a subscriber sees changed.
        visible_change = old.model_dump(exclude={"last_seen"}) != node.model_dump(
            exclude={"last_seen"}
        )
        assert (published_state(fx) is not None) == visible_change
        # Commands go only to a stale node, and only for its action.
        for cmd in commands(fx):
            assert node.state == "stale"
            assert cmd.command == node.action
            assert cmd.boot_id == node.boot_id
        if node.state == "stale" and node.active_version is not None:
            assert node.action == "reboot" or node.version == node.active_version


def test_states_and_events_built_without_revalidation_are_what_validation_makes() -> None:
    # The machine copies states and builds events from already validated values
    # (validated once, at the boundary): each must equal, and serialise like,
    # the model validated from its own JSON.
    rng = random.Random(11)  # noqa: S311 - reproducible fuzzing, nothing secret
    node = NodeState(mac=MAC)
    for i in range(2000):
        node, fx = step(node, random_input(rng, float(i)))
        made = [node, *(e.data for e in fx if isinstance(e, PublishEvent))]
        for model in made:
            again = type(model).model_validate_json(model.model_dump_json())
            assert again == model
            assert again.model_dump_json() == model.model_dump_json()


def test_a_composed_reason_too_long_for_the_state_is_refused_as_before() -> None:
    node, _ = step(NodeState(mac=MAC), booted(V1, V1, policy=AUTO_ALL))
    node, _ = step(node, LiveEdit(at=at(1), label=LABEL, version=V1, policy=AUTO_ALL))
    failed = RemountResult(
        at=at(2), label=LABEL, version=V1, active_version=V1, ok=False, error="x" * 1024
    )
    with pytest.raises(ValueError, match="reason"):
        transition(node, failed)
