"""The daemon's comparison of store and database, as a pure function of the two views."""

from __future__ import annotations

from datetime import UTC, datetime

from controller.daemon.builds import LabelRow
from controller.daemon.images import DbView, StoreView, diff
from controller.events.payloads import VersionSummary
from controller.store.history import Entry, replay

V1 = "20250101T000000.000Z-00000001"
V2 = "20250102T000000.000Z-00000002"
NOW = datetime(2025, 1, 3, tzinfo=UTC)
T1 = "2025-01-01T10:00:00.000000Z"
T2 = "2025-01-02T10:00:00.000000Z"


def summary(version: str) -> VersionSummary:
    return VersionSummary(version=version, built_at=NOW, kind="full", file_count=1, size_bytes=1)


def store_view(
    entries: list[Entry], new: tuple[str, ...] = (), edits: dict[str, int] | None = None
) -> StoreView:
    on_disk = (V1, V2)
    return StoreView(
        label="demo",
        on_disk=on_disk,
        entries=tuple(entries),
        stack=tuple(replay(entries, exists=set(on_disk))),
        live_edits=edits or {V1: 0, V2: 0},
        new={v: summary(v) for v in new},
    )


def db_view(active: str | None, announced: int | None, known: tuple[str, ...] = (V1, V2)) -> DbView:
    return DbView(
        known={v: summary(v) for v in known},
        row=LabelRow("demo", active, None, 1.0),
        announced=announced,
        live_edits={},
    )


def test_agreement_changes_nothing() -> None:
    entries = [Entry(T1, "activate", V1)]
    found = diff(store_view(entries), db_view(V1, 1), NOW)
    assert not found.changed
    assert (found.active, found.activated_at, found.since) == (V1, None, 1.0)


def test_an_activation_by_hand_is_announced_and_judges_the_nodes() -> None:
    entries = [Entry(T1, "activate", V1), Entry(T2, "activate", V2)]
    found = diff(store_view(entries), db_view(V1, 1), NOW)
    assert found.changed
    assert (found.active, found.target, found.announce_from) == (V2, V1, 1)
    assert found.activated_at == datetime(2025, 1, 2, 10, tzinfo=UTC)
    assert found.since == found.activated_at.timestamp()


def test_a_first_look_announces_only_the_last_change() -> None:
    entries = [Entry(T1, "activate", V1), Entry(T2, "activate", V2)]
    assert diff(store_view(entries), db_view(V1, None), NOW).announce_from == 1
    assert diff(store_view(entries), db_view(V2, None), NOW).announce_from == 2


def test_a_live_edit_asks_for_a_remount_but_a_new_version_does_not() -> None:
    entries = [Entry(T1, "activate", V1)]
    edited = store_view(entries, edits={V1: 1, V2: 0})
    found = diff(edited, db_view(V1, 1), NOW)
    assert (found.changed, dict(found.edits), found.remount) == (True, {V1: 1}, (V1,))
    fresh = store_view(entries, new=(V2,), edits={V1: 0, V2: 2})
    found = diff(fresh, db_view(V1, 1, known=(V1,)), NOW)
    assert (found.changed, found.remount) == (True, ())
