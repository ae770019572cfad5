"""An rw label's node writes its served tree in place: that must never reach the
base cache, the rollback target or a rebuilt version (issue 9, item 2)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from support import Workspace, make_root_tree

from controller.store import versions as store

VICTIM = "usr/lib/pkg0000/file000000"


def _rw_workspace(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path)
    make_root_tree(ws.tree)
    ws.write()
    # The label table is the config's last: the key lands in [labels.demo].
    ws.config.write_text(ws.config.read_text() + "rw = true\n")
    return ws


def _new_version(ws: Workspace, motd: str) -> str:
    """An overlay edit makes a new version from the cached base (inputs unchanged)."""
    target = ws.overlays / "common" / "etc" / "motd"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(motd)
    ws.run("build", "demo", "--activate")
    active = ws.active()
    assert active is not None
    return active


def _bases(ws: Workspace) -> list[Path]:
    return sorted(p for p in (ws.state / "cache" / "bases" / "demo").iterdir() if p.is_dir())


def _node_writes(ws: Workspace) -> Path:
    """What the node does through its rw export: append to a file and rewrite one in place."""
    victim = ws.export_link / VICTIM
    with victim.open("ab") as f:
        f.write(b"written by the node\n")
    with (ws.export_link / "etc/hostname").open("r+b") as f:
        f.write(b"EVIL")
    return victim


def test_node_write_reaches_neither_rollback_target_nor_cache(tmp_path: Path) -> None:
    ws = _rw_workspace(tmp_path)
    first = _new_version(ws, "one\n")
    second = _new_version(ws, "two\n")
    assert first != second
    victim = _node_writes(ws)
    ws.run("verify", "demo", first, "--deep")
    for base in _bases(ws):
        store.verify_base(base)
    # A rebuild from the cache is clean, and so is every version but the written one.
    third = _new_version(ws, "three\n")
    ws.run("verify", "demo", third, "--deep")
    ws.run("verify", "demo", first, "--deep")
    assert b"written by the node" not in (ws.images() / third / "rootfs" / VICTIM).read_bytes()
    assert not (ws.images() / third / "rootfs/etc/hostname").read_bytes().startswith(b"EVIL")
    # The written version itself fails --deep, as it should: its node changed it.
    failed = ws.run("verify", "demo", second, "--deep", check=False)
    assert failed.returncode != 0
    assert VICTIM in failed.stderr or "etc/hostname" in failed.stderr
    assert victim.stat().st_nlink == 1  # the written inode was the version's own


def test_poisoned_cache_is_rebuilt_not_copied(tmp_path: Path) -> None:
    """A cache an older netroot hard-linked into rw versions may have been written."""
    ws = _rw_workspace(tmp_path)
    _new_version(ws, "one\n")
    (base,) = _bases(ws)
    with (base / "rootfs" / VICTIM).open("ab") as f:
        f.write(b"written through a shared inode\n")
    result = ws.run("build", "demo", "--activate", "--force")
    assert "rebuilding it" in result.stderr + result.stdout
    active = ws.active()
    assert active is not None
    ws.run("verify", "demo", active, "--deep")
    assert b"shared inode" not in (ws.images() / active / "rootfs" / VICTIM).read_bytes()
    store.verify_base(_bases(ws)[0])


def test_rw_version_shares_no_inode_with_the_store(tmp_path: Path) -> None:
    ws = _rw_workspace(tmp_path)
    first = _new_version(ws, "one\n")
    second = _new_version(ws, "two\n")
    # No regular file of a version is a hard link into the cache or the other version.
    for version in (first, second):
        rootfs = ws.images() / version / "rootfs"
        for dirpath, _dirs, files in os.walk(rootfs):
            for name in files:
                st = os.lstat(os.path.join(dirpath, name))
                assert st.st_nlink == 1, os.path.join(dirpath, name)


def test_shell_session_on_an_rw_label_copies_not_links(tmp_path: Path) -> None:
    """`netroot shell` on an rw label: the session's version neither shares inodes with
    the parent its node writes, nor trusts the parent's index for what the node wrote."""
    ws = _rw_workspace(tmp_path)
    _add_tools(ws.tree)
    parent = _new_version(ws, "one\n")
    _node_writes(ws)  # the node wrote its tree before the session
    done = ws.json("shell", "demo", "--command", "echo x > /etc/y")
    new = done["version"]
    assert new and done["parent"] == parent
    ws.run("verify", "demo", new, "--deep")
    _node_writes(ws)  # and keeps writing after it
    ws.run("verify", "demo", new, "--deep")
    for base in _bases(ws):
        store.verify_base(base)


def _add_tools(root: Path) -> None:
    """The host's sh and its libraries at the same paths inside the tree."""
    found = shutil.which("sh")
    assert found is not None
    real = os.path.realpath(found)
    shutil.copy2(real, root / "usr" / "bin" / "sh")  # /bin -> usr/bin in the tree
    out = subprocess.run(["ldd", real], capture_output=True, text=True, check=False).stdout
    for lib in re.findall(r"(/\S+)", out):
        dest = root / lib.lstrip("/")
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib, dest)
