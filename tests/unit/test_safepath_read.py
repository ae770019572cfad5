"""Reading files out of an image: resolved inside it, regular files only, copied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller.core.errors import UnsafePathError
from controller.store.safepath import ImageRoot


@pytest.fixture
def image(tmp_path: Path) -> Path:
    root = tmp_path / "image"
    (root / "boot").mkdir(parents=True)
    (root / "boot" / "vmlinuz-1").write_bytes(b"kernel")
    (root / "vmlinuz").symlink_to("/boot/vmlinuz-1")
    (tmp_path / "host").write_bytes(b"host")
    (root / "boot" / "escape").symlink_to(tmp_path / "host")
    (root / "boot" / "up").symlink_to("../" * 30 + str(tmp_path / "host").lstrip("/"))
    os.mkfifo(root / "boot" / "fifo")
    return root


def test_symlinks_resolve_inside_and_the_copy_is_a_new_inode(image: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with ImageRoot(image) as root:
        assert root.resolve_file("vmlinuz") == "boot/vmlinuz-1"
        assert root.listdir("boot") and "vmlinuz-1" in root.listdir("/boot/")
        size, sha = root.copy_out("/vmlinuz", dest, mode=0o644)
    assert dest.read_bytes() == b"kernel" and size == 6 and len(sha) == 64
    assert dest.stat().st_ino != (image / "boot" / "vmlinuz-1").stat().st_ino
    assert dest.stat().st_mode & 0o7777 == 0o644


@pytest.mark.parametrize(
    ("rel", "why"),
    [
        ("boot/escape", "no such file in the image"),
        ("boot/up", "no such file in the image"),
        ("../../host", "no such file in the image"),
        ("boot/fifo", "not a regular file"),
        ("boot", "not a regular file"),
        ("", "not a file path"),
    ],
)
def test_escapes_and_odd_files_are_refused(image: Path, tmp_path: Path, rel: str, why: str) -> None:
    with ImageRoot(image, "img") as root, pytest.raises(UnsafePathError, match=why):
        root.copy_out(rel, tmp_path / "out", mode=0o644)
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "host").stat().st_nlink == 1
