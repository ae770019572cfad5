"""Model.trusted: what model_construct makes, for values already valid (the node events'
fast path), and nothing else."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from controller.core.model import Model
from controller.events.node_events import (
    BootTiming,
    Drift,
    NodeBooted,
    NodeBootTiming,
    NodeCurrent,
    NodeDhcp,
    NodeDiff,
    NodeEventData,
    NodeLost,
    NodeRemounted,
    NodeRemountRequested,
    NodeStale,
    NodeState,
)

MAC = "52:54:00:12:34:56"
VERSION = "20250301T120000.000Z-0123abcd"
BOOT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
AT = datetime(2025, 3, 1, 12, tzinfo=UTC)
COMMON = {"mac": MAC, "state": "up", "label": "debian12", "version": VERSION}
TIMING = BootTiming(total_s=40.5, kernel_s=3.0, initrd_s=20.0, userspace_s=17.5)

# Each node event, with its required fields and some optional ones left out.
SAMPLES: list[tuple[type[Model], dict[str, Any]]] = [
    (NodeDhcp, {**COMMON, "ip": "10.0.2.15", "firmware": True}),
    (NodeBooted, {**COMMON, "boot_id": BOOT_ID, "ip": "10.0.2.15"}),
    (NodeBooted, {"mac": MAC, "state": "booting", "boot_id": BOOT_ID}),
    (NodeBootTiming, {**COMMON, "boot_id": BOOT_ID, "boot_timing": TIMING}),
    (NodeDiff, {**COMMON, "diff": Drift(added=0, modified=0, deleted=0, truncated=False)}),
    (NodeStale, {**COMMON, "state": "stale", "action": "reboot", "commanded": False}),
    (NodeRemountRequested, {**COMMON, "reason": "tree edited"}),
    (NodeRemounted, COMMON),
    (NodeLost, {**COMMON, "state": "lost"}),
    (NodeCurrent, COMMON),
    (NodeState, {"mac": MAC, "ip": "10.0.2.15", "last_seen": AT}),
]


def test_every_node_event_is_sampled() -> None:
    assert {cls for cls, _ in SAMPLES} >= set(NodeEventData.__subclasses__())


@pytest.mark.parametrize(("cls", "values"), SAMPLES, ids=lambda v: getattr(v, "__name__", ""))
def test_trusted_makes_what_model_construct_makes(cls: type[Model], values: dict[str, Any]) -> None:
    made, constructed = cls.trusted(**values), cls.model_construct(**values)
    assert made == constructed
    assert list(made.__dict__) == list(cls.model_fields)  # in field order, as validation makes it
    assert made.model_fields_set == constructed.model_fields_set == set(values)
    assert made.model_dump_json() == constructed.model_dump_json()
    assert cls.model_validate_json(made.model_dump_json()) == made  # the values were valid


def test_trusted_refuses_an_unknown_field_and_a_missing_one() -> None:
    with pytest.raises(TypeError, match=r"unknown \['colour'\]"):
        NodeCurrent.trusted(**COMMON, colour="red")
    with pytest.raises(TypeError, match=r"missing \['firmware', 'ip'\]"):
        NodeDhcp.trusted(**COMMON)


def test_trusted_update_makes_what_model_copy_makes() -> None:
    node = NodeState(mac=MAC, ip="10.0.2.15", last_seen=AT)
    changes = {"state": "up", "label": "debian12", "version": VERSION, "since": AT}
    made, copied = node.trusted_update(**changes), node.model_copy(update=changes)
    assert made == copied and made.model_dump_json() == copied.model_dump_json()
    assert list(made.__dict__) == list(NodeState.model_fields)
    assert made.model_fields_set == copied.model_fields_set
    assert node.state == "unknown"  # the original is left as it was
    with pytest.raises(TypeError, match=r"unknown \['colour'\]"):
        node.trusted_update(colour="red")
