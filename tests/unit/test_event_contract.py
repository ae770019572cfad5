"""What an outside subscriber relies on: schemas with ids, strict formats, fresh ids,
a will that claims nothing it cannot know, history lines turned into changes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest

from controller.daemon.announce import changes, entry_time
from controller.daemon.emit import Emitter, Health
from controller.daemon.outbox import OutboxRow
from controller.events.wire import (
    CONTENT_TYPE,
    ENVELOPE_REQUIRED,
    Activated,
    NodeState,
    Topics,
    envelope_json,
    json_schemas,
)
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
