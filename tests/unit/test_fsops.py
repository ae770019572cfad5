"""Write-if-changed and point-a-symlink: the one home of each (store.fsops)."""

from __future__ import annotations

import os
from pathlib import Path

from controller.store import fsops


def test_a_file_that_already_holds_the_data_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "menus" / "default"
    assert fsops.write_if_changed(path, b"one\n")
    inode = path.stat().st_ino
    assert not fsops.write_if_changed(path, b"one\n")
    assert path.stat().st_ino == inode  # not even renamed over
    assert fsops.stage_file_if_changed(path, b"one\n") is None
    assert fsops.write_if_changed(path, b"two\n")
    assert path.read_bytes() == b"two\n"
    assert path.stat().st_ino != inode


def test_a_staged_file_is_a_sibling_until_renamed(tmp_path: Path) -> None:
    path = tmp_path / "exports"
    tmp = fsops.stage_file_if_changed(path, b"/srv *(ro)\n")
    assert tmp is not None and tmp.parent == tmp_path and not path.exists()
    os.replace(tmp, path)
    assert fsops.holds(path, b"/srv *(ro)\n")
    assert not fsops.holds(tmp_path / "missing", b"")


def test_a_link_already_pointing_at_the_target_is_not_staged_again(tmp_path: Path) -> None:
    link = tmp_path / "export" / "demo"
    tmp = fsops.stage_symlink_if_changed(link, "../v1/rootfs")
    assert tmp is not None
    os.replace(tmp, link)
    assert fsops.stage_symlink_if_changed(link, "../v1/rootfs") is None
    moved = fsops.stage_symlink_if_changed(link, Path("../v2/rootfs"))
    assert moved is not None and os.readlink(moved) == "../v2/rootfs"
