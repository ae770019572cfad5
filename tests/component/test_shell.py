"""`netroot shell`: a new version from a session's changes, --live edits in place, nothing leaks.

The image is a small tree holding the host's sh and a few tools; the versions
share inodes through hard links (ext4 has no reflinks), which is exactly what a
session must never write through.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from support import Workspace

from controller.build.upper import meaningful_changes, update_index, upper_entries
from controller.store import liveedits, treeindex
from controller.store.layout import LabelPaths

TOOLS = ("sh", "cat", "rm", "mkdir", "ls", "chmod", "ln", "echo", "touch", "hostname", "mount")


def _add_tools(root: Path) -> None:
    """Host binaries and their libraries, at the same paths inside the tree."""
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found is not None, tool
        real = os.path.realpath(found)
        shutil.copy2(real, root / "usr" / "bin" / tool)  # /bin -> usr/bin in the tree
        out = subprocess.run(["ldd", real], capture_output=True, text=True, check=False).stdout
        for lib in re.findall(r"(/\S+)", out):
            dest = root / lib.lstrip("/")
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(lib, dest)


@pytest.fixture
def ws(workspace: Workspace) -> Workspace:
    _add_tools(workspace.tree)
    workspace.run("build", workspace.label, "--activate")
    return workspace


def rootfs(ws: Workspace, version: str) -> Path:
    return ws.images() / version / "rootfs"


def host_mounts_under(path: Path) -> list[str]:
    prefix = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def shell(ws: Workspace, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return ws.run("shell", ws.label, *args, check=check)


def test_changes_become_a_new_version_and_the_old_one_is_untouched(ws: Workspace) -> None:
    old = ws.active()
    assert old is not None
    hostname = rootfs(ws, old) / "etc" / "hostname"
    done = ws.json(
        "shell",
        ws.label,
        "--command",
        "echo x > /etc/y; echo more >> /etc/hostname; rm /etc/os-release",
    )
    new = done["version"]
    assert new and done["parent"] == old and not done["activated"]
    assert sorted(done["changed"]) == ["-etc/os-release", "etc/hostname", "etc/y"]
    assert ws.versions() == [old, new] and ws.active() == old  # not activated
    new_root = rootfs(ws, new)
    assert (new_root / "etc" / "y").read_text() == "x\n"
    assert (new_root / "etc" / "hostname").read_text() == "node\nmore\n"
    assert not (new_root / "etc" / "os-release").exists()
    # the older version, the shared inode and the import source are as they were
    assert hostname.read_text() == "node\n"
    assert not (rootfs(ws, old) / "etc" / "y").exists()
    assert (rootfs(ws, old) / "etc" / "os-release").is_file()
    assert (ws.tree / "etc" / "hostname").read_text() == "node\n"
    assert (new_root / "etc/netroot/version").read_text().strip() == new
    manifest = json.loads((ws.images() / new / "manifest.json").read_text())
    assert manifest["builder"] == "shell" and manifest["parent"] == old
    ws.run("verify", ws.label, new, "--deep")  # the index matches the tree, file by file
    assert host_mounts_under(ws.state) == []
    assert [p.name for p in (ws.images() / ".staging").iterdir()] == []


def test_no_change_no_version_and_the_output_is_shown(ws: Workspace) -> None:
    before = ws.versions()
    done = shell(ws, "--command", "cat /etc/hostname")
    assert done.stdout.splitlines()[0] == "node"
    assert "no changes" in done.stdout
    assert ws.versions() == before


def test_a_failing_command_keeps_nothing(ws: Workspace) -> None:
    before = ws.versions()
    done = shell(ws, "--command", "echo z > /etc/z; echo oops >&2; exit 3", check=False)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("netroot: error:")]
    assert errors == [
        "netroot: error: the command exited with status 3; nothing it changed was kept: oops"
    ]
    assert ws.versions() == before
    assert host_mounts_under(ws.state) == []


def test_activate_and_overlay_only_rebuild_keeps_the_session(ws: Workspace) -> None:
    done = ws.json("shell", ws.label, "--activate", "--command", "mkdir /opt && echo 1 > /opt/f")
    assert done["activated"] and ws.active() == done["version"]
    (ws.overlays / ws.label / "etc").mkdir(parents=True)
    (ws.overlays / ws.label / "etc" / "motd").write_text("overlay\n")
    ws.run("build", ws.label, "--overlays-only", "--activate")
    active = ws.active()
    assert active is not None and active != done["version"]
    assert (rootfs(ws, active) / "opt" / "f").read_text() == "1\n"
    assert (rootfs(ws, active) / "etc" / "motd").read_text() == "overlay\n"


def test_live_edits_the_active_tree_and_records_it(ws: Workspace) -> None:
    first = ws.active()
    assert first is not None
    ws.json("shell", ws.label, "--activate", "--command", "echo 2 > /etc/second")
    active = ws.active()
    assert active is not None and active != first
    done = shell(ws, "--live", "--command", "echo live > /etc/live; echo more >> /etc/hostname")
    assert "mount -o remount /" in done.stderr and "warning" in done.stderr
    assert ws.versions() == [first, active]  # no new version
    assert (rootfs(ws, active) / "etc" / "live").read_text() == "live\n"
    assert (rootfs(ws, active) / "etc" / "hostname").read_text() == "node\nmore\n"
    # the older version shared that inode: it is intact
    assert (rootfs(ws, first) / "etc" / "hostname").read_text() == "node\n"
    assert not (rootfs(ws, first) / "etc" / "live").exists()
    paths = LabelPaths(
        ws.label,
        ws.images(),
        ws.export_link,
        ws.tftp_link,
        ws.root / "tftp",
        ws.state / "cache" / "bases" / ws.label,
    )
    edits = liveedits.read(paths, active)
    assert [(e.changed, e.paths) for e in edits] == [(2, ("etc/hostname", "etc/live"))]
    again = ws.json("shell", ws.label, "--live", "--command", "rm /etc/live")
    assert again["live_edits"] == 2 and again["changed"] == ["-etc/live"]
    assert liveedits.count(paths, active) == 2
    assert host_mounts_under(ws.state) == []


def test_live_and_activate_are_exclusive(ws: Workspace) -> None:
    done = shell(ws, "--live", "--activate", "--command", "true", check=False)
    assert done.returncode == 1 and "--live" in done.stderr


def test_no_terminal_needs_a_command(ws: Workspace) -> None:
    done = ws.run("shell", ws.label, check=False)
    assert done.returncode == 1 and "--command" in done.stderr


def test_index_update_matches_a_full_scan(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for d in ("etc/sub", "var/old"):
        (lower / d).mkdir(parents=True)
    (lower / "etc" / "a").write_text("a")
    (lower / "var" / "old" / "x").write_text("x")
    index = treeindex.scan(lower)
    # an upper layer: a changed file, a new symlink, a removal, an opaque directory
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "a").write_text("changed")
    (upper / "etc" / "link").symlink_to("a")
    os.mknod(upper / "etc" / "sub", 0o600 | 0o020000, os.makedev(0, 0))
    (upper / "var" / "old").mkdir(parents=True)
    os.setxattr(upper / "var" / "old", "trusted.overlay.opaque", b"y")
    (upper / "var" / "old" / "y").write_text("y")
    entries = upper_entries(upper)
    assert meaningful_changes(entries, upper, lower) == [
        "etc/a",
        "etc/link",
        "-etc/sub",
        "var/old",
        "var/old/y",
    ]
    from controller.build.builders import cow

    cow.merge_upper(upper, lower)
    update_index(index, lower, entries)
    assert treeindex.render(index) == treeindex.render(treeindex.scan(lower))


def host_sentinels() -> dict[str, object]:
    """What a shell session must not change on the host."""
    with open("/proc/self/mountinfo") as f:
        sys_mounts = sorted(
            " ".join(line.split()[4:6])
            for line in f
            if line.split()[4] == "/sys" or line.split()[4].startswith("/sys/")
        )
    return {
        "dev": sorted(os.listdir("/dev")),
        "hostname": socket.gethostname(),
        "proc-hostname": Path("/proc/sys/kernel/hostname").read_text(),
        "sys": sys_mounts,
        "sys-x": os.path.lexists("/sys/x"),
    }


def test_a_session_cannot_change_the_hosts_dev_sys_or_hostname(ws: Workspace) -> None:
    before, versions = host_sentinels(), ws.versions()
    assert "x" not in before["dev"]  # type: ignore[operator]
    done = shell(
        ws,
        "--command",
        "touch /dev/x; echo 1 > /proc/sys/kernel/hostname || echo proc-sys-ro; "
        "hostname foo || echo hostname-refused; "
        "mount -o remount,rw /sys || echo remount-refused; touch /sys/x || echo sys-ro; "
        "ls /dev; echo out > /dev/null && echo null-ok",
    )
    assert host_sentinels() == before
    lines = done.stdout.splitlines()
    for seen in (
        "proc-sys-ro",
        "hostname-refused",
        "remount-refused",
        "sys-ro",
        "x",
        "null",
        "null-ok",
    ):
        assert seen in lines, seen
    # /dev is the session's own: what it wrote there is no change to the image
    assert "no changes" in done.stdout and ws.versions() == versions
    assert host_mounts_under(ws.state) == []
