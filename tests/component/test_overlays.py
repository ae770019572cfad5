"""Overlay-only versions: only the edited file differs and the older version stays bit-for-bit."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from support import Workspace, snapshot


def _tree_state(rootfs: Path) -> dict[str, tuple[int, str]]:
    """(inode, content sha256 or link target) of every entry."""
    state = {}
    for p in sorted(rootfs.rglob("*")):
        st = p.lstat()
        if p.is_symlink():
            detail = os.readlink(p)
        elif p.is_file():
            detail = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            detail = "dir"
        state[str(p.relative_to(rootfs))] = (st.st_ino, detail)
    return state


def test_one_file_overlay_edit_changes_only_that_file(workspace: Workspace) -> None:
    conf = workspace.overlays / "common" / "etc" / "ssh"
    conf.mkdir(parents=True)
    (conf / "sshd_config").write_text("PermitRootLogin no\n")
    (workspace.overlays / "demo" / "etc").mkdir(parents=True)
    (workspace.overlays / "demo" / "etc" / "issue").write_text("demo node\n")
    v1 = workspace.json("build", "demo", "--activate")["version"]
    old_root = workspace.images() / v1["version"] / "rootfs"
    old_state = _tree_state(old_root)
    old_manifest = (workspace.images() / v1["version"] / "manifest.json").read_bytes()

    (conf / "sshd_config").write_text("PermitRootLogin prohibit-password\n")
    built = workspace.run("build", "demo", "--activate")
    assert "reusing base tree" in built.stderr
    v2 = workspace.active()
    assert v2 is not None and v2 != v1["version"]
    new_state = _tree_state(workspace.images() / v2 / "rootfs")

    changed = {
        p
        for p in old_state.keys() | new_state.keys()
        if old_state.get(p, (0, ""))[1] != new_state.get(p, (0, ""))[1]
    }
    assert changed == {"etc/ssh/sshd_config", "etc/netroot/version"}
    assert (workspace.export_link / "etc/ssh/sshd_config").read_text().endswith("password\n")

    # The older version is unchanged: same inodes, same content, same manifest bytes.
    assert _tree_state(old_root) == old_state
    assert (workspace.images() / v1["version"] / "manifest.json").read_bytes() == old_manifest
    assert (old_root / "etc/ssh/sshd_config").read_text() == "PermitRootLogin no\n"
    workspace.run("verify", "demo", v1["version"], "--deep")
    workspace.run("verify", "demo", v2, "--deep")


def test_label_overlay_wins_and_whiteout_deletes(workspace: Workspace) -> None:
    (workspace.overlays / "common" / "etc").mkdir(parents=True)
    (workspace.overlays / "common" / "etc" / "motd").write_text("common\n")
    (workspace.overlays / "demo" / "etc").mkdir(parents=True)
    (workspace.overlays / "demo" / "etc" / "motd").write_text("label\n")
    (workspace.overlays / "demo" / "etc" / ".wh.hostname").write_text("")
    (workspace.overlays / "demo" / "lib" / "modules-load.d").mkdir(parents=True)
    (workspace.overlays / "demo" / "lib" / "modules-load.d" / "nfs.conf").write_text("nfs\n")
    workspace.run("build", "demo", "--activate")
    root = workspace.export_link
    assert (root / "etc/motd").read_text() == "label\n"
    assert not (root / "etc/hostname").exists()
    # lib -> usr/lib in the image: the overlay lands where the node will see it.
    assert (root / "usr/lib/modules-load.d/nfs.conf").read_text() == "nfs\n"
    assert (root / "lib").is_symlink()
    workspace.run("verify", "demo", "--deep")


def test_removing_an_overlay_file_restores_the_base_file(workspace: Workspace) -> None:
    overlay_file = workspace.overlays / "common" / "etc" / "hostname"
    overlay_file.parent.mkdir(parents=True)
    overlay_file.write_text("from-overlay\n")
    workspace.run("build", "demo", "--activate")
    assert (workspace.export_link / "etc/hostname").read_text() == "from-overlay\n"
    overlay_file.unlink()
    workspace.run("build", "demo", "--activate")
    assert (workspace.export_link / "etc/hostname").read_text() == "node\n"


def test_overlay_fifo_is_refused_and_nothing_is_built(workspace: Workspace) -> None:
    (workspace.overlays / "demo").mkdir(parents=True)
    os.mkfifo(workspace.overlays / "demo" / "pipe")
    result = workspace.run("build", "demo", check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "overlays/demo/pipe: overlay holds a fifo" in lines[0]
    assert "allowed: regular files, directories, symlinks" in lines[0]
    assert not workspace.images().exists()


def test_manifest_lists_what_users_check(workspace: Workspace) -> None:
    version = workspace.json("build", "demo")["version"]
    manifest = json.loads((workspace.images() / version["version"] / "manifest.json").read_text())
    for key in (
        "version",
        "label",
        "recipe_sha256",
        "base_key",
        "overlay_digest",
        "kernel_version",
        "boot_digest",
        "created",
        "builder",
        "file_count",
        "size_bytes",
    ):
        assert manifest[key] not in (None, "")
    index = (workspace.images() / version["version"] / "files.idx").read_text().splitlines()
    assert manifest["file_count"] == len(index)
    regular = [line for line in index if line.split("\t")[1] == "f"]
    assert manifest["size_bytes"] == sum(int(line.split("\t")[5]) for line in regular)


@pytest.mark.parametrize("name", [".wh..", ".wh...", ".wh."])
def test_whiteout_naming_dot_or_dotdot_is_refused(workspace: Workspace, name: str) -> None:
    """`.wh...` once ran rmtree on the staging directory."""
    workspace.run("build", "demo", "--activate")
    before = snapshot(workspace.state)
    (workspace.overlays / "demo" / "etc").mkdir(parents=True)
    (workspace.overlays / "demo" / "etc" / name).write_bytes(b"")
    result = workspace.run("build", "demo", check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"overlays/demo/etc/{name}: whiteout names no file" in lines[0]
    assert snapshot(workspace.state) == before
    assert workspace.run("verify", "demo", "--deep").returncode == 0


def test_non_utf8_overlay_name_is_refused_and_leaves_no_staging(workspace: Workspace) -> None:
    workspace.run("build", "demo", "--activate")
    before = snapshot(workspace.state)
    bad = Path(os.fsdecode(os.fsencode(workspace.overlays / "demo") + b"/caf\xe9"))
    bad.mkdir(parents=True)
    (bad / "motd").write_bytes(b"hi\n")
    result = workspace.run("build", "demo", check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "overlays/demo/caf\\xe9: overlay file name is not UTF-8" in lines[0]
    assert snapshot(workspace.state) == before
    staging = workspace.images() / ".staging"
    assert not staging.exists() or os.listdir(staging) == []
