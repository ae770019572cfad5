"""Event envelope, payload schemas, topics and node-message validation."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from controller.core.errors import NetrootError
from controller.core.ids import normalize_mac
from controller.events.envelope import EVENT_MODELS, Envelope, envelope_json, json_schemas
from controller.events.node_events import NodeStale, NodeState
from controller.events.node_messages import (
    NodeCommand,
    NodeMessageError,
    NodeReport,
    parse_node_message,
)
from controller.events.payloads import Activated, BuildFailed, ControllerStatus, Pruned
from controller.events.topics import Topics

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
MAC = "52:54:00:ab:cd:ef"  # letters, so case handling is really exercised
BOOT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
LOWER = "10.0.2.2:/srv/netroot/debian12"
REPORT_TOPIC = f"netroot/node/{MAC}/report"
VERSION = "20250301T120000.000Z-0123abcd"


def boot_report(**changes: object) -> bytes:
    body: dict[str, object] = {
        "kind": "boot",
        "mac": MAC,
        "label": "debian12",
        "version": VERSION,
        "kernel": "6.1.0-18-amd64",
        "ip": "10.0.2.15",
        "boot_id": BOOT_ID,
        "root": {"fstype": "overlay", "source": "overlay", "lower": LOWER},
    }
    body.update(changes)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def rejection(topic: str, payload: bytes, **kwargs: int | str) -> NodeMessageError:
    with pytest.raises(NodeMessageError) as info:
        parse_node_message(topic, payload, **kwargs)  # type: ignore[arg-type]
    return info.value


# --- envelope -----------------------------------------------------------------


def test_envelope_is_cloudevents_structured_json_and_round_trips() -> None:
    data = Activated(label="debian12", version=VERSION, previous="20250201T000000.000Z-ffffffff")
    raw = envelope_json(data, "debian12", "netroot://boot1", now=NOW)

    wire = json.loads(raw)
    assert wire["specversion"] == "1.0"
    assert wire["type"] == "org.netroot.image.activated"
    assert wire["source"] == "netroot://boot1"
    assert wire["subject"] == "debian12"
    assert wire["datacontenttype"] == "application/json"
    assert wire["time"] == "2025-03-01T12:00:00Z"
    assert uuid.UUID(wire["id"]).version == 4
    assert wire["data"]["version"] == VERSION

    back = Envelope.model_validate_json(raw)
    assert back.time == NOW
    assert EVENT_MODELS[back.type].model_validate(back.data) == data


def test_envelope_keeps_a_caller_id_and_a_non_utc_offset() -> None:
    plus2 = NOW.astimezone(timezone(timedelta(hours=2)))
    status = ControllerStatus(status="online", netroot_version="0.1.0", since=NOW)
    wire = json.loads(envelope_json(status, None, "b", now=plus2, event_id="e-1"))
    assert wire["id"] == "e-1"
    assert "subject" not in wire  # optional CloudEvents attribute left out, not null
    assert datetime.fromisoformat(wire["time"]) == NOW


def test_two_envelopes_get_distinct_ids() -> None:
    data = Pruned(label="debian12", versions=(VERSION,))
    ids = {json.loads(envelope_json(data, "debian12", "s", now=NOW))["id"] for _ in range(50)}
    assert len(ids) == 50


def test_envelope_refuses_a_naive_time() -> None:
    data = Pruned(label="debian12", versions=(VERSION,))
    with pytest.raises(ValueError, match="timezone-aware"):
        envelope_json(data, "debian12", "s", now=datetime(2025, 1, 1))


def test_build_failed_carries_the_log_tail_to_subscribers() -> None:
    failed = BuildFailed(
        label="debian12",
        build_id="b-7",
        kind="full",
        step="install",
        error="mmdebstrap exited with status 1",
        log_tail="E: Unable to locate package vim-nox\n",
        duration_s=12.5,
    )
    back = Envelope.model_validate_json(envelope_json(failed, "debian12", "s", now=NOW))
    parsed = EVENT_MODELS[back.type].model_validate(back.data)
    assert isinstance(parsed, BuildFailed)
    assert parsed.log_tail.endswith("vim-nox\n")
    assert parsed.step == "install"


# --- schemas ------------------------------------------------------------------

SECTION_6_TYPES = {
    "org.netroot.controller.status",
    "org.netroot.image.build.started",
    "org.netroot.image.build.succeeded",
    "org.netroot.image.build.failed",
    "org.netroot.image.activated",
    "org.netroot.image.rolled_back",
    "org.netroot.image.pruned",
    "org.netroot.image.state",
    "org.netroot.node.dhcp",
    "org.netroot.node.booted",
    "org.netroot.node.stale",
    "org.netroot.node.remount_requested",
    "org.netroot.node.remounted",
    "org.netroot.node.lost",
    "org.netroot.node.current",
    "org.netroot.node.state",
    # issue 10: boot timings and drift
    "org.netroot.node.boot_timing",
    "org.netroot.node.diff",
    # issue 12: canary rollouts
    "org.netroot.image.canary_started",
    "org.netroot.image.canary_node_passed",
    "org.netroot.image.canary_passed",
    "org.netroot.image.canary_failed",
    # issue 12: replica boot servers
    "org.netroot.image.replicated",
    "org.netroot.image.replication_failed",
    "org.netroot.replica.state",
}


def test_json_schemas_cover_every_event_and_node_message() -> None:
    schemas = json_schemas()
    controller_events = {
        "org.netroot.state.index",
        "org.netroot.controller.config_reloaded",
        "org.netroot.controller.config_rejected",
    }
    expected = SECTION_6_TYPES | controller_events | {"envelope", "node.report", "node.command"}
    assert set(schemas) == expected
    json.dumps(schemas)  # what `netroot schema` prints must be plain JSON
    for name, schema in schemas.items():
        assert schema["type"] == "object", name
        # Subscribers can rely on unknown fields being refused, as the models do.
        assert schema["additionalProperties"] is False, name


def test_schema_documents_the_required_fields_and_allowed_commands() -> None:
    schemas = json_schemas()
    assert set(schemas["node.report"]["required"]) == {"kind", "mac"}
    assert set(schemas["node.report"]["properties"]["kind"]["enum"]) == {
        "boot",
        "timing",
        "heartbeat",
        "remount_result",
        "diff_result",
        "health_result",
        "offline",
    }
    # health runs the check baked into the image: the message names no command line
    assert set(schemas["node.command"]["properties"]["command"]["enum"]) == {
        "remount",
        "reboot",
        "report",
        "diff",
        "health",
    }
    assert "pattern" in schemas["org.netroot.node.stale"]["properties"]["mac"]


@pytest.mark.parametrize("event_type", sorted(EVENT_MODELS))
def test_every_payload_refuses_unknown_fields(event_type: str) -> None:
    with pytest.raises(ValidationError, match="surprise"):
        EVENT_MODELS[event_type].model_validate({"surprise": 1})


def test_payloads_are_immutable() -> None:
    data = Activated(label="debian12", version=VERSION)
    with pytest.raises(ValidationError):
        data.version = "other"  # type: ignore[misc]


def test_node_command_only_knows_remount_reboot_and_report() -> None:
    ok = NodeCommand(command="remount", id="c1", boot_id=BOOT_ID)
    assert json.loads(ok.model_dump_json())["command"] == "remount"
    with pytest.raises(ValidationError, match="command"):
        NodeCommand.model_validate({"command": "exec", "id": "c2"})


def test_node_state_has_an_action_exactly_when_stale() -> None:
    with pytest.raises(ValidationError, match="action is set exactly when state is 'stale'"):
        NodeState(mac=MAC, state="stale")
    with pytest.raises(ValidationError, match="action is set exactly when state is 'stale'"):
        NodeState(mac=MAC, state="up", action="reboot")


def test_node_event_payload_normalises_the_mac() -> None:
    stale = NodeStale(mac=MAC.upper(), state="stale", action="reboot", commanded=False)
    assert stale.mac == MAC


# --- topics -------------------------------------------------------------------


def test_default_topics_match_the_design_table() -> None:
    t = Topics()
    assert t.controller_status() == "netroot/controller/status"
    assert t.image_events("debian12") == "netroot/events/image/debian12"
    assert t.image_state("debian12") == "netroot/state/image/debian12"
    assert t.node_events(MAC) == f"netroot/events/node/{MAC}"
    assert t.node_state(MAC) == f"netroot/state/node/{MAC}"
    assert t.node_report(MAC) == f"netroot/node/{MAC}/report"
    assert t.node_cmd(MAC) == f"netroot/node/{MAC}/cmd"
    assert t.node_reports() == "netroot/node/+/report"


def test_prefix_is_configurable_and_topics_use_the_canonical_mac() -> None:
    t = Topics("site-a/netroot")
    assert t.node_cmd(MAC.upper()) == f"site-a/netroot/node/{MAC}/cmd"
    assert t.report_mac(t.node_report(MAC)) == MAC


@pytest.mark.parametrize("prefix", ["", "a/+/b", "#", "a//b", "/netroot", "netroot/"])
def test_prefix_with_wildcards_or_empty_levels_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="not a topic prefix"):
        Topics(prefix)


@pytest.mark.parametrize("label", ["a/b", "+", "#", "", "UPPER"])
def test_label_that_would_change_the_topic_is_refused(label: str) -> None:
    with pytest.raises(ValueError, match="invalid label for a topic"):
        Topics().image_events(label)


# --- MAC ----------------------------------------------------------------------


def test_mac_is_normalised_to_lowercase() -> None:
    assert normalize_mac("52:54:00:AB:CD:EF") == "52:54:00:ab:cd:ef"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("52-54-00-ab-cd-ef", "not a MAC address like aa:bb:cc:dd:ee:ff"),
        ("5254.00ab.cdef", "not a MAC address"),
        ("525400abcdef", "not a MAC address"),
        ("52:54:00:ab:cd", "not a MAC address"),
        ("52:54:00:ab:cd:ef:01", "not a MAC address"),
        (" 52:54:00:ab:cd:ef", "not a MAC address"),
        ("52:54:00:ab:cd:eg", "not a MAC address"),
        ("ff:ff:ff:ff:ff:ff", "multicast"),
        ("01:00:5e:00:00:01", "multicast"),
        ("00:00:00:00:00:00", "null address"),
    ],
)
def test_anything_but_a_unicast_mac_is_refused_with_the_value(value: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        normalize_mac(value)
    assert repr(value) in str(info.value)


# --- node messages ------------------------------------------------------------


def test_a_valid_boot_report_is_returned_as_a_model() -> None:
    report = parse_node_message(REPORT_TOPIC, boot_report())
    assert report.kind == "boot"
    assert report.mac == MAC
    assert report.version == VERSION
    assert report.root is not None
    assert report.root.lower == LOWER
    assert str(report.ip) == "10.0.2.15"


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("10.0.2.15", "10.0.2.15"), ("FD00::0:1", "fd00::1"), ("::ffff:10.0.2.15", "::ffff:a00:20f")],
)
def test_a_reported_ip_is_kept_in_its_canonical_spelling(sent: str, kept: str) -> None:
    # One address, one spelling: a node's state changes only when its address does.
    assert parse_node_message(REPORT_TOPIC, boot_report(ip=sent)).ip == kept


@pytest.mark.parametrize("ip", ["010.0.2.15", "10.0.2", "10.0.2.15 ", "fe80::g", 167772687])
def test_a_report_with_no_ip_address_is_refused_naming_the_field(ip: object) -> None:
    error = rejection(REPORT_TOPIC, boot_report(ip=ip))
    assert "ip" in error.reason and "IPv4 or IPv6 address" in error.reason, error.reason


def test_a_will_message_needs_only_kind_and_mac() -> None:
    will = json.dumps({"kind": "offline", "mac": MAC, "boot_id": BOOT_ID}).encode()
    assert parse_node_message(REPORT_TOPIC, will).kind == "offline"


def test_payload_mac_in_upper_case_matches_its_topic() -> None:
    assert parse_node_message(REPORT_TOPIC, boot_report(mac=MAC.upper())).mac == MAC


def test_custom_prefix_is_honoured() -> None:
    topic = f"lab/netroot/node/{MAC}/report"
    assert parse_node_message(topic, boot_report(), "lab/netroot").mac == MAC
    err = rejection(REPORT_TOPIC, boot_report(), prefix="lab/netroot")
    assert "lab/netroot/node/<mac>/report" in err.reason


def test_rejection_names_the_topic() -> None:
    err = rejection(REPORT_TOPIC, b"{")
    assert isinstance(err, NetrootError)
    assert err.topic == REPORT_TOPIC
    assert REPORT_TOPIC in str(err)
    assert err.reason.startswith("invalid JSON")


@pytest.mark.parametrize(
    "topic",
    [
        f"netroot/node/{MAC}/cmd",
        f"netroot/events/node/{MAC}",
        f"other/node/{MAC}/report",
        "netroot/node/report",
        "netroot/node/+/report",
        f"netroot/node/{MAC}/x/report",
        "netroot/node/52-54-00-ab-cd-ef/report",
        f"netroot/node/{MAC.upper()}/report",  # the ACL grants the lowercase topic only
    ],
)
def test_messages_on_other_topics_are_refused(topic: str) -> None:
    err = rejection(topic, boot_report())
    assert err.topic == topic


def test_oversized_payload_is_refused_before_parsing() -> None:
    err = rejection(REPORT_TOPIC, b"{" + b" " * 10_000 + b"}", max_bytes=4096)
    assert err.reason == "payload of 10002 bytes exceeds 4096"


def test_deeply_nested_garbage_is_refused_not_crashing() -> None:
    err = rejection(REPORT_TOPIC, b"[" * 3000 + b"]" * 3000)
    assert err.reason.startswith("invalid JSON")


@pytest.mark.parametrize("payload", [b"[]", b'"boot"', b"42", b"null"])
def test_a_payload_that_is_not_an_object_is_refused(payload: bytes) -> None:
    assert rejection(REPORT_TOPIC, payload).reason == "payload is not a JSON object"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (boot_report(kind="reboot"), "kind: Input should be"),
        (boot_report(mac="52-54-00-ab-cd-ef"), "mac: '52-54-00-ab-cd-ef' is not a MAC address"),
        (boot_report(ip="10.0.2.300"), "ip: "),
        (boot_report(boot_id="not-a-uuid"), "boot_id: String should match pattern"),
        (boot_report(label="Debian 12"), "label: String should match pattern"),
        (boot_report(root={"fstype": "nfs", "color": "red"}), "root.color: Extra inputs"),
        (boot_report(command="rm -rf /"), "command: Extra inputs are not permitted"),
        (boot_report(version=None, boot_id=None), "a boot report needs version, boot_id"),
        (boot_report(kind="remount_result"), "a remount_result report needs ok"),
    ],
)
def test_schema_rejections_name_the_field(payload: bytes, reason: str) -> None:
    assert rejection(REPORT_TOPIC, payload).reason.startswith(reason)


def test_a_node_cannot_report_for_another_mac() -> None:
    other = "52:54:00:99:99:99"
    err = rejection(REPORT_TOPIC, boot_report(mac=other))
    assert err.reason == f"mac: {other} does not match the topic's {MAC}"


def test_report_model_is_what_the_agent_sends() -> None:
    heartbeat = NodeReport(kind="heartbeat", mac=MAC, label="debian12", version=VERSION)
    again = parse_node_message(REPORT_TOPIC, heartbeat.model_dump_json(exclude_none=True).encode())
    assert again == heartbeat
