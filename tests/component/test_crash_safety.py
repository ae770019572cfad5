"""SIGKILL at every step boundary and inside file writes: after a restart the label is
served from one complete version, export and TFTP agree, and no leftover remains."""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections import Counter

import pytest
from support import Workspace

from controller.build.pipeline import STEPS
from controller.config.load import load_config
from controller.store import versions as store
from controller.store.layout import TMP_MARK, label_paths

BUILD_FAILPOINTS = [f"build:{name}" for name, _ in STEPS] + [
    "build:done",
    "overlay:write#1",
    "overlay:write#2",
    "overlay:write#3",
    "write_atomic:chunk#1",
    "write_atomic:chunk#2",
]
# Everything is staged before the commit (links, menus), then renamed into place.
PRE_COMMIT = [
    "swap_symlink:created#1",
    "swap_symlink:created#2",
    # The start-up recovery every command runs first re-renders the menu (chunk #1).
    "write_atomic:chunk#2",
    "activate:before-commit",
]
POST_COMMIT = [
    "activate:committed",
    "activate:export-swapped",
    "activate:tftp-swapped",
    "activate:menu-rendered",
]
ACTIVATION_FAILPOINTS = PRE_COMMIT + POST_COMMIT
SYSCALLS = ["write", "rename", "renameat2", "symlink", "fsync", "mkdir", "unlink", "linkat"]


@pytest.fixture
def served(workspace: Workspace) -> Workspace:
    """demo with v1 active and a 3 MiB overlay file (several write chunks)."""
    (workspace.overlays / "demo").mkdir(parents=True)
    _edit_overlay(workspace, "v1")
    workspace.run("build", "demo", "--activate")
    return workspace


def _edit_overlay(ws: Workspace, tag: str) -> None:
    (ws.overlays / "demo" / "big.bin").write_bytes(tag.encode() * (3 * 1024 * 1024 // len(tag)))
    (ws.overlays / "demo" / "tag").write_text(tag)


def assert_consistent(ws: Workspace, allowed: set[str]) -> str:
    """Restart (recovery), then check the whole served state; returns the active version."""
    ws.run("recover")
    config = load_config(ws.config)
    paths = label_paths(config, "demo")
    active = store.active_version(paths)
    assert active in allowed
    assert os.readlink(paths.export_link) == str(paths.rootfs(active))
    assert os.readlink(paths.tftp_link) == f"_versions/demo/{active}"
    assert (paths.tftp_link / "initrd.img").samefile(paths.boot(active) / "initrd.img")
    manifest = store.verify_version(paths, active, depth="deep")
    assert (paths.tftp_link / "vmlinuz").stat().st_size == manifest.kernel.size
    assert (paths.export_link / "etc/netroot/version").read_text() == f"{active}\n"
    assert f"# netroot: demo {active}" in paths.menu.read_text()
    assert not paths.staging.exists() or os.listdir(paths.staging) == []
    for directory in (paths.export_link.parent, paths.tftp_link.parent, paths.menu.parent):
        assert not [n for n in os.listdir(directory) if TMP_MARK in n], directory
    for version in store.version_ids(paths):
        store.verify_version(paths, version, depth="deep")  # every committed version is complete
    return active


def _killed(result_code: int) -> bool:
    return result_code in (-signal.SIGKILL, 128 + signal.SIGKILL)


@pytest.mark.parametrize("point", BUILD_FAILPOINTS)
def test_build_and_activate_killed_at_failpoint(served: Workspace, point: str) -> None:
    old = served.active()
    _edit_overlay(served, "v2")
    result = served.run(
        "build", "demo", "--activate", check=False, env={"NETROOT_FAILPOINT": point}
    )
    assert _killed(result.returncode), f"failpoint {point} not reached: {result.stderr}"
    versions = set(served.versions())
    active = assert_consistent(served, versions)
    if point.startswith(("build:", "overlay:")) and point != "build:done":
        assert active == old  # killed before the commit: the old version is still served


@pytest.mark.parametrize("point", ACTIVATION_FAILPOINTS)
def test_activation_killed_at_failpoint(served: Workspace, point: str) -> None:
    old = served.active()
    assert old is not None
    _edit_overlay(served, "v2")
    new = served.json("build", "demo")["version"]["version"]
    result = served.run("activate", "demo", new, check=False, env={"NETROOT_FAILPOINT": point})
    assert _killed(result.returncode), f"failpoint {point} not reached: {result.stderr}"
    active = assert_consistent(served, {old, new})
    assert active == (new if point in POST_COMMIT else old)
    if point in PRE_COMMIT:
        assert len(store.read_history(label_paths(load_config(served.config), "demo"))) == 1


def _syscall_counts(ws: Workspace, *args: str) -> Counter[str]:
    trace = ws.root / "trace.txt"
    ws.run(*args, prefix=("strace", "-o", str(trace), "-e", "trace=" + ",".join(SYSCALLS)))
    calls = re.findall(r"^(\w+)\(", trace.read_text(), flags=re.M)
    return Counter(c for c in calls if c in SYSCALLS)


def _samples(count: int, most: int = 6) -> list[int]:
    if count <= most:
        return list(range(1, count + 1))
    return sorted({1 + round(i * (count - 1) / (most - 1)) for i in range(most)})


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is installed by .ci/setup")
def test_sigkill_inside_syscalls_of_build_and_activate(served: Workspace) -> None:
    """Real SIGKILLs delivered by strace at the N-th write/rename/fsync/... of the process."""
    _edit_overlay(served, "count")
    counts = _syscall_counts(served, "build", "demo", "--activate")
    assert counts["write"] > 3 and counts["fsync"] > 3
    runs = 0
    for syscall, count in sorted(counts.items()):
        for nth in _samples(count):
            before = set(served.versions())
            _edit_overlay(served, f"{syscall}{nth}")
            inject = f"inject={syscall}:signal=KILL:when={nth}"
            result = served.run(
                "build",
                "demo",
                "--activate",
                check=False,
                prefix=("strace", "-o", "/dev/null", "-e", f"trace={syscall}", "-e", inject),
            )
            assert _killed(result.returncode) or result.returncode == 0, result.stderr
            assert_consistent(served, before | set(served.versions()))
            runs += 1
    assert runs >= 20
