"""What an outside subscriber relies on: schemas with ids, strict formats, fresh ids,
a will that claims nothing it cannot know, history lines turned into changes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from controller.daemon.announce import changes, entry_time
from controller.daemon.emit import Emitter, Health
from controller.daemon.outbox import OutboxRow
from controller.events.envelope import (
    CONTENT_TYPE,
    ENVELOPE_REQUIRED,
    EVENT_MODELS,
    Envelope,
    envelope_json,
    json_schemas,
)
from controller.events.node_events import (
    BootTiming,
    Drift,
    DriftEntry,
    NodeBooted,
    NodeBootTiming,
    NodeCurrent,
    NodeDhcp,
    NodeDiff,
    NodeLost,
    NodeRemounted,
    NodeRemountRequested,
    NodeStale,
    NodeState,
    RootMount,
)
from controller.events.payloads import (
    Activated,
    BuildFailed,
    BuildStarted,
    BuildSucceeded,
    CanaryFailed,
    CanaryNodePassed,
    CanaryPassed,
    CanaryStarted,
    ConfigRejected,
    ConfigReloaded,
    ControllerStatus,
    ImageReplicated,
    ImageReplicationFailed,
    ImageState,
    LabelCounts,
    Payload,
    Pruned,
    ReplicaLabel,
    ReplicaState,
    RolledBack,
    StateIndex,
    VersionSummary,
)
from controller.events.topics import Topics
from controller.store.history import Entry

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
MAC = "52:54:00:ab:cd:ef"
V1 = "20260301T120000.000Z-0000aaaa"
V2 = "20260302T120000.000Z-0000bbbb"
V3 = "20260303T120000.000Z-0000cccc"
# The formats JSON Schema 2020-12 defines; anything else a strict validator refuses.
STANDARD_FORMATS = {
    "date-time", "date", "time", "duration", "email", "idn-email", "hostname",
    "idn-hostname", "ipv4", "ipv6", "uri", "uri-reference", "iri", "iri-reference",
    "uuid", "uri-template", "json-pointer", "relative-json-pointer", "regex",
}  # fmt: skip


def formats(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["format"]} if isinstance(node.get("format"), str) else set()
        return found.union(*(formats(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(formats(v) for v in node))
    return set()


def validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_every_schema_names_its_dialect_and_a_versioned_id() -> None:
    schemas = json_schemas()
    ids = [s["$id"] for s in schemas.values()]
    assert len(set(ids)) == len(ids)
    for name, schema in schemas.items():
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", name
        assert schema["$id"] == f"urn:netroot:schema:{name}:1", name
        validator(schema)  # a valid schema of its dialect


def test_only_standard_formats_are_used() -> None:
    used = formats(json_schemas())
    assert "ipvanyaddress" not in used
    assert used <= STANDARD_FORMATS, used - STANDARD_FORMATS


def test_the_envelope_requires_the_attributes_and_none_may_be_null() -> None:
    envelope = json_schemas()["envelope"]
    assert set(ENVELOPE_REQUIRED) >= {"specversion", "id", "source", "type", "time"}
    assert set(envelope["required"]) == set(ENVELOPE_REQUIRED)
    check = validator(envelope)
    good = json.loads(
        envelope_json(Activated(label="demo", version=V1), None, "netroot://h", now=NOW)
    )
    check.validate(good)
    for bad in (
        {**good, "subject": None},
        {k: v for k, v in good.items() if k != "specversion"},
        {k: v for k, v in good.items() if k != "time"},
        {**good, "time": "yesterday"},
        {**good, "source": "not a uri"},
    ):
        assert not check.is_valid(bad), bad


def test_every_event_names_the_schema_its_data_validates_against() -> None:
    schemas = {s["$id"]: s for s in json_schemas().values()}
    node = NodeState(mac=MAC, state="up", label="demo", version=V1, ip="10.0.2.15", since=NOW)
    for data, subject in (
        (node, MAC),
        (Activated(label="demo", version=V2, reason="auto"), "demo"),
    ):
        event = json.loads(envelope_json(data, subject, "netroot://h", now=NOW))
        validator(schemas[event["dataschema"]]).validate(event["data"])
    bad_ip = json.loads(envelope_json(node, MAC, "netroot://h", now=NOW))["data"]
    bad_ip["ip"] = "10.0.2.300"
    assert not validator(schemas["urn:netroot:schema:org.netroot.node.state:1"]).is_valid(bad_ip)


def health() -> Health:
    return Health(NOW, 2, 5, 0, 1, ("demo",), 30.0)


def test_each_status_is_a_new_event_and_the_will_claims_no_time_it_cannot_know() -> None:
    emitter = Emitter(Topics(), source="netroot://h")
    first, second = (emitter.status("online", since=NOW, health=health()) for _ in range(2))
    one, two = json.loads(first.payload), json.loads(second.payload)
    assert one["id"] != two["id"]
    assert one["data"]["heartbeat_s"] == 30.0
    assert one["data"]["outbox_pending"] == 5
    assert one["data"]["running_builds"] == ["demo"]
    assert one["data"]["broker_connected"] is True
    assert first.retain and first.content_type == CONTENT_TYPE
    will = json.loads(emitter.will().payload)["data"]
    assert will["will"] is True
    assert will["status"] == "offline"
    assert "since" not in will or will["since"] is None
    assert will.get("outbox_pending") is None
    assert json.loads(emitter.will().payload)["id"] != json.loads(emitter.will().payload)["id"]


def test_commands_expire_and_events_are_typed_cloudevents() -> None:
    emitter = Emitter(Topics(), source="netroot://h")
    cmd = emitter.message(OutboxRow(1, f"netroot/node/{MAC}/cmd", b"{}", 1, False))
    event = emitter.message(OutboxRow(2, "netroot/events/image/demo", b"{}", 1, False))
    assert cmd.expiry_s is not None and cmd.expiry_s > 0
    assert cmd.content_type == "application/json"
    assert (event.expiry_s, event.content_type) == (None, CONTENT_TYPE)


def stamp(second: int) -> str:
    return f"2026-03-01T12:00:{second:02d}.000000Z"


def test_history_lines_become_changes_with_their_previous_version() -> None:
    entries = [
        Entry(stamp(1), "activate", V1),
        Entry(stamp(2), "activate", V2),
        Entry(stamp(3), "activate", V2),  # already active: no change
        Entry(stamp(4), "rollback", V1),
        Entry(stamp(5), "activate", V3),
    ]
    found = [(c.entry.action, c.entry.version, c.previous) for c in changes(entries, 1)]
    assert found == [("activate", V2, V1), ("rollback", V1, V2), ("activate", V3, V1)]
    assert changes(entries, len(entries)) == []
    assert entry_time(entries[3]) == datetime(2026, 3, 1, 12, 0, 4, tzinfo=UTC)


@pytest.mark.parametrize("reason", ["auto", "cli", "rollback", "canary"])
def test_activated_carries_a_reason_and_its_build(reason: str) -> None:
    data = Activated(label="demo", version=V1, build_id="20260301T120000-abcdef", reason=reason)
    assert json.loads(data.model_dump_json())["reason"] == reason


# --- every event as a CloudEvents SDK reads it --------------------------------

BOOT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
SUMMARY = VersionSummary(
    version=V1, built_at=NOW, kind="full", kernel="6.1.0", file_count=3, size_bytes=4096
)
ROOT = RootMount(fstype="nfs4", source="10.0.2.2:/demo/" + V1)
TIMING = BootTiming(kernel_s=1.2, initrd_s=3.4, userspace_s=20.1, total_s=24.7)
DRIFT = Drift(
    entries=(DriftEntry(change="added", type="file", size=2, path="/root/ü\n.txt"),),
    added=1,
    modified=0,
    deleted=3,
    truncated=True,
)
CANARY = {"label": "demo", "rollout_id": "canary-20260302T120000Z-0a1b2c3d", "version": V2}
CANARY_SAMPLES = (
    CanaryStarted(**CANARY, previous=V1, macs=(MAC,), reason="cli", timeout_s=600, rebooting=True),
    CanaryNodePassed(**CANARY, mac=MAC, output_tail="running\n"),
    CanaryPassed(**CANARY, macs=(MAC,)),
    CanaryFailed(
        **CANARY,
        previous=V1,
        check="health",
        mac=MAC,
        exit_code=1,
        output_tail="degraded\n",
        detail="health check exited 1",
    ),
)
# One event of each type, with every field a subscriber may meet set: a payload
# model added to the registry without a sample here fails the test below.
SAMPLES: dict[str, Payload] = {
    m.event_type: m
    for m in (
        BuildStarted(label="demo", build_id="b-1", kind="full", reason="edit", paths=("a",)),
        BuildSucceeded(label="demo", build_id="b-1", kind="overlay", version=V1, duration_s=1.5),
        BuildFailed(
            label="demo", build_id="b-1", kind="full", step="install", error="ü", duration_s=0
        ),
        Activated(label="demo", version=V2, previous=V1, kernel="6.1", build_id="b-2"),
        RolledBack(label="demo", version=V1, previous=V2),
        Pruned(label="demo", versions=(V1,), kept=(V2,)),
        ImageReplicated(
            label="demo",
            replica="boot2",
            version=V2,
            fetched_files=3,
            fetched_bytes=4096,
            linked_files=1200,
            duration_s=2.5,
            held=False,
        ),
        ImageReplicationFailed(
            label="demo", replica="boot2", version=V2, error="primary: 503", retry_s=30
        ),
        ReplicaState(
            replica="boot2",
            primary_url="http://10.0.0.1:9650",
            labels=(
                ReplicaLabel(label="demo", active=V1, primary_active=V2, behind=True, error="ü"),
            ),
        ),
        ImageState(label="demo", active=SUMMARY, activated_at=NOW, previous=V2),
        NodeDhcp(mac=MAC, state="dhcp", ip="10.0.2.15", firmware=True, hostname="n1"),
        NodeBooted(
            mac=MAC,
            state="booting",
            label="demo",
            version=V1,
            boot_id=BOOT_ID,
            root=ROOT,
            boot_timing=TIMING,
        ),
        NodeBootTiming(mac=MAC, state="up", boot_id=BOOT_ID, boot_timing=TIMING),
        NodeDiff(mac=MAC, state="up", boot_id=BOOT_ID, command_id="c-1", diff=DRIFT),
        NodeStale(mac=MAC, state="stale", action="reboot", active_version=V2, commanded=True),
        NodeRemountRequested(mac=MAC, state="stale", reason="tree changed"),
        NodeRemounted(mac=MAC, state="up", label="demo", version=V1),
        NodeLost(mac=MAC, state="lost", reason="will"),
        NodeCurrent(mac=MAC, state="up", label="demo", version=V2),
        NodeState(mac=MAC, state="stale", action="remount", since=NOW, last_seen=NOW, root=ROOT),
        ControllerStatus(status="online", since=NOW, running_builds=("demo",), heartbeat_s=30),
        StateIndex(labels={"demo": LabelCounts(active=V1, nodes={"up": 2})}, node_count=2),
        ConfigReloaded(source="/etc/netroot/netroot.toml", labels=("demo",)),
        ConfigRejected(source="/etc/netroot/netroot.toml", error="labels.x: invalid"),
        *CANARY_SAMPLES,
    )
}


def test_there_is_a_sample_of_every_event_type() -> None:
    assert set(SAMPLES) == set(EVENT_MODELS)


@pytest.mark.parametrize("event_type", sorted(EVENT_MODELS))
@pytest.mark.parametrize("subject", [None, "demo/ü"])
def test_envelope_json_is_an_event_the_cloudevents_sdk_reads(
    event_type: str, subject: str | None
) -> None:
    data = SAMPLES[event_type]
    raw = envelope_json(data, subject, "netroot://h", now=NOW, event_id="e-1")
    event = JSONFormat().read(CloudEvent, raw)
    assert event.get_specversion() == "1.0"
    assert event.get_id() == "e-1"
    assert event.get_source() == "netroot://h"
    assert event.get_type() == event_type
    assert event.get_time() == NOW
    assert event.get_subject() == subject
    assert event.get_datacontenttype() == "application/json"
    assert event.get_dataschema() == data.schema_id()
    assert event.get_data() == json.loads(data.model_dump_json())
    # The payload comes back equal, and the envelope is what its own model takes.
    assert EVENT_MODELS[event_type].model_validate(event.get_data()) == data
    assert Envelope.model_validate_json(raw).data == event.get_data()
