"""What the controller takes from an agent's timing and diff reports: bounded, never trusted."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller.events.node_events import MAX_DRIFT_ENTRIES
from controller.events.node_messages import (
    MAX_REPORT_BYTES,
    NodeCommand,
    NodeMessageError,
    parse_node_message,
)

MAC = "52:54:00:ab:cd:ef"
TOPIC = f"netroot/node/{MAC}/report"
V1 = "20250101T000000.000Z-11111111"
BOOT = "0f8fad5b-d9cb-469f-a165-70867728950e"
TIMING = {"kernel_s": 1.2, "initrd_s": 3.4, "userspace_s": 20.1, "total_s": 24.7}


def entry(path: str = "/root/drift.txt", **fields: Any) -> dict[str, Any]:
    return {"change": "added", "type": "file", "size": 2, "path": path, **fields}


def diff(entries: list[dict[str, Any]], **counts: Any) -> dict[str, Any]:
    return {"entries": entries, "added": len(entries), "modified": 0, "deleted": 0,
            "truncated": False, **counts}  # fmt: skip


def parse(kind: str, **fields: Any) -> Any:
    report = {"kind": kind, "mac": MAC, "label": "debian12", "version": V1, **fields}
    # the size cap aside (tested below): what the model itself bounds
    return parse_node_message(TOPIC, json.dumps(report).encode(), max_bytes=1 << 20)


def test_a_timing_report_needs_its_boot_and_figures() -> None:
    report = parse("timing", boot_id=BOOT, boot_timing=TIMING)
    assert report.boot_timing is not None and report.boot_timing.total_s == 24.7
    with pytest.raises(NodeMessageError, match="a timing report needs boot_timing"):
        parse("timing", boot_id=BOOT)
    # a boot report may carry them (asked again after the boot), or not
    assert parse("boot", boot_id=BOOT).boot_timing is None


@pytest.mark.parametrize(
    ("figures", "words"),
    [
        ({**TIMING, "total_s": -1}, "boot_timing.total_s: Input should be greater than or equal"),
        ({**TIMING, "kernel_s": 86401}, "boot_timing.kernel_s: Input should be less than"),
        ({**TIMING, "userspace_s": "soon"}, "boot_timing.userspace_s"),
        ({"kernel_s": 1, "total_s": 2}, "boot_timing.userspace_s: Field required"),
        ({**TIMING, "plot": 1}, "boot_timing.plot: Extra inputs are not permitted"),
    ],
)
def test_boot_figures_are_bounded(figures: dict[str, Any], words: str) -> None:
    with pytest.raises(NodeMessageError, match=words):
        parse("timing", boot_id=BOOT, boot_timing=figures)


def test_a_diff_result_carries_the_listing_and_the_command_it_answers() -> None:
    report = parse("diff_result", boot_id=BOOT, command_id="c-1", diff=diff([entry()]))
    assert report.diff is not None and report.command_id == "c-1"
    assert report.diff.entries[0].path == "/root/drift.txt"
    with pytest.raises(NodeMessageError, match="a diff_result report needs diff"):
        parse("diff_result")


@pytest.mark.parametrize(
    ("listing", "words"),
    [
        (diff([entry()], truncated=True), "truncated must say"),
        (diff([entry(), entry("/b")], added=3), "truncated must say"),
        (diff([entry()], added=0, modified=1), "1 added entries listed, added counts fewer"),
        (diff([entry("relative")]), "String should match pattern"),
        (diff([entry(change="renamed")]), "diff.entries.0.change"),
        (diff([entry(type="door")]), "diff.entries.0.type"),
        (diff([entry(size=-1)]), "diff.entries.0.size"),
        (diff([entry("/" + "x" * 4096)]), "diff.entries.0.path: String should have at most"),
        (diff([entry(f"/{i}") for i in range(MAX_DRIFT_ENTRIES + 1)]), "at most 200 items"),
        (diff([], added=-1), "diff.added"),
    ],
)
def test_a_listing_that_contradicts_itself_or_exceeds_the_bounds_is_refused(
    listing: dict[str, Any], words: str
) -> None:
    with pytest.raises(NodeMessageError, match=words):
        parse("diff_result", diff=listing)


def test_a_diff_report_over_the_cap_is_refused_before_it_is_parsed() -> None:
    listing = diff([entry(f"/{i:03d}" + "x" * 40) for i in range(150)])
    payload = json.dumps({"kind": "diff_result", "mac": MAC, "label": "debian12",
                          "version": V1, "diff": listing}).encode()  # fmt: skip
    assert len(payload) > MAX_REPORT_BYTES
    with pytest.raises(NodeMessageError, match="exceeds 8192"):
        parse_node_message(TOPIC, payload)


def test_diff_is_a_command_that_needs_no_boot_id() -> None:
    assert NodeCommand(command="diff", id="c-1").boot_id is None
