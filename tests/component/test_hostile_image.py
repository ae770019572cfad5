"""A hostile image never makes netroot write on the host."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
from support import Workspace, make_root_tree, snapshot


@pytest.fixture
def host_side(tmp_path: Path) -> Path:
    """A directory standing for the host's /etc, with a sentinel file."""
    host = tmp_path / "host-etc"
    host.mkdir()
    (host / "sentinel").write_text("untouched\n")
    return host


def _hostile_tree(ws: Workspace, host: Path) -> None:
    make_root_tree(ws.tree)
    os.rename(ws.tree / "etc", ws.tree / "real-etc")
    (ws.tree / "etc").symlink_to(host)  # absolute, pointing at the host directory
    os.rename(ws.tree / "usr", ws.tree / "real-usr")
    (ws.tree / "usr").symlink_to("/usr")  # absolute: on the node this is itself (a loop)
    (ws.tree / "bin").unlink()
    (ws.tree / "bin").symlink_to("/bin")
    (ws.tree / "loop-a").symlink_to("loop-b")
    (ws.tree / "loop-b").symlink_to("loop-a")
    (ws.tree / "escape").symlink_to("../../../../../../../../" + str(host).lstrip("/"))
    (ws.tree / "var/lib/target").symlink_to(host / "sentinel")


@pytest.mark.parametrize(
    "overlay_path",
    [
        "etc/passwd",
        "usr/bin/evil",
        "bin/evil",
        "loop-a/x",
        "escape/evil",
        "var/lib/target",
        "escape/sentinel",
    ],
)
def test_overlay_never_writes_through_image_symlinks(
    tmp_path: Path, host_side: Path, overlay_path: str
) -> None:
    ws = Workspace(tmp_path)
    _hostile_tree(ws, host_side)
    ws.write()
    target = ws.overlays / "common" / overlay_path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("overlay content\n")
    before = snapshot(host_side)
    real_etc = snapshot(Path("/etc"))
    result = ws.run("build", "demo", "--activate", check=False)
    assert snapshot(host_side) == before
    assert (host_side / "sentinel").read_text() == "untouched\n"
    assert snapshot(Path("/etc")) == real_etc
    if result.returncode == 0:
        # Resolved inside the image: the file exists in the image tree only.
        rootfs = ws.images() / ws.active() / "rootfs"  # type: ignore[operator]
        found = [
            p
            for p in rootfs.rglob("*")
            if p.is_file() and not p.is_symlink() and p.read_bytes() == b"overlay content\n"
        ]
        assert found, "the overlay file went nowhere"
        assert all(rootfs in p.parents for p in found)
    else:
        errors = [x for x in result.stderr.splitlines() if x.startswith("netroot: error:")]
        assert len(errors) == 1
        line = errors[0]
        assert any(w in line for w in ("symlink loop", "dangling symlink", "non-directory"))
        assert not (ws.images() / ".staging").exists() or not os.listdir(ws.images() / ".staging")


def test_symlink_at_overlay_target_is_replaced_not_followed(
    tmp_path: Path, host_side: Path
) -> None:
    ws = Workspace(tmp_path)
    make_root_tree(ws.tree)
    (ws.tree / "var/lib/target").symlink_to(host_side / "sentinel")
    ws.write()
    (ws.overlays / "common" / "var/lib").mkdir(parents=True)
    (ws.overlays / "common" / "var/lib/target").write_text("replaced\n")
    ws.run("build", "demo", "--activate")
    assert (host_side / "sentinel").read_text() == "untouched\n"
    placed = ws.export_link / "var/lib/target"
    assert not placed.is_symlink() and placed.read_text() == "replaced\n"


def test_hostile_tar_cannot_extract_outside(tmp_path: Path, host_side: Path) -> None:
    ws = Workspace(tmp_path)
    make_root_tree(ws.tree)
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(ws.tree, arcname=".")
        link = tarfile.TarInfo("./etc2")
        link.type, link.linkname = tarfile.SYMTYPE, str(host_side)
        tar.addfile(link)
        payload = tmp_path / "payload"
        payload.write_text("pwned\n")
        tar.add(payload, arcname="./etc2/sentinel")
        tar.add(payload, arcname="../outside-file")
    ws.write(source="evil.tar")
    before = snapshot(host_side)
    ws.run("build", "demo", check=False)
    assert snapshot(host_side) == before
    assert not (tmp_path.parent / "outside-file").exists()
    assert not (ws.images() / "outside-file").exists()
