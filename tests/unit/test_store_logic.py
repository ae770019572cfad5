"""Pure store logic: version ids, history replay, gc selection, argv builders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.build.builders.importer import copy_tree_argv, tar_extract_argv
from controller.core.ids import is_store_version
from controller.store.fsops import clone_tree_argv
from controller.store.gc import select_prunable
from controller.store.history import Entry, parse, replay
from controller.store.layout import new_version_id


def test_version_ids_sort_by_time_and_carry_the_content_hash() -> None:
    t0 = datetime(2026, 11, 26, 9, 30, 15, 123456, tzinfo=UTC)
    ids = [new_version_id(t0 + timedelta(milliseconds=ms), "f" * 64) for ms in (0, 1, 999, 1000)]
    assert ids[0] == "20261126T093015.123Z-ffffffff"
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert all(is_store_version(i) for i in ids)
    assert not is_store_version("20261126T093015Z-ffffffff")


def _entries(*pairs: tuple[str, str]) -> list[Entry]:
    return [Entry(f"t{i}", action, version) for i, (action, version) in enumerate(pairs)]  # type: ignore[arg-type]


def test_replay_is_a_rollback_stack() -> None:
    history = _entries(("activate", "A"), ("activate", "B"), ("activate", "C"))
    assert replay(history) == ["A", "B", "C"]
    history += _entries(("rollback", "B"))
    assert replay(history) == ["A", "B"]
    history += _entries(("rollback", "A"))
    assert replay(history) == ["A"]
    history += _entries(("activate", "C"))
    assert replay(history) == ["A", "C"]


def test_replay_skips_pruned_versions_and_repeats() -> None:
    history = _entries(("activate", "A"), ("activate", "A"), ("activate", "B"), ("activate", "C"))
    assert replay(history) == ["A", "B", "C"]
    assert replay(history, exists={"A", "C"}) == ["A", "C"]


def test_torn_last_line_is_ignored() -> None:
    text = "t1 activate A\nt2 activate B\nt3 activ"
    assert [e.version for e in parse(text)] == ["A", "B"]
    assert parse("garbage line\nt1 activate A\n") == [Entry("t1", "activate", "A")]


def test_gc_selection_keeps_newest_and_protected() -> None:
    versions = ["v1", "v2", "v3", "v4", "v5"]
    assert select_prunable(versions, keep=2, protected=set()) == ["v1", "v2", "v3"]
    assert select_prunable(versions, keep=2, protected={"v1", "v3"}) == ["v2"]
    assert select_prunable(versions, keep=10, protected=set()) == []


def test_argv_builders() -> None:
    src, dst = Path("/s"), Path("/d")
    assert clone_tree_argv(src, dst, reflink=False) == [
        "cp",
        "-a",
        "--no-target-directory",
        "--link",
        "/s",
        "/d",
    ]
    assert clone_tree_argv(src, dst, reflink=True)[3] == "--reflink=always"
    assert copy_tree_argv(src, dst) == ["cp", "-a", "--no-target-directory", "/s", "/d"]
    assert tar_extract_argv(Path("/a.tar"), dst) == [
        "tar",
        "--extract",
        "--file",
        "/a.tar",
        "--directory",
        "/d",
        "--numeric-owner",
        "--same-owner",
        "--preserve-permissions",
        "--xattrs",
        "--xattrs-include=*",
        "--acls",
        "--delay-directory-restore",
    ]
