"""The agent's stale-handle probe against a real overlay mount on this host.

A node's root is an overlay whose lower layer is the NFS export; a live edit
replaces files in that layer by rename. Here the lower layer is a tmpfs
directory, the overlay is mounted by the test, and a real shell runs a
script from it; the agent (`agent stale`, as its heartbeat and remount use
it) must name that process once the script is replaced under it, and never
a file of the writable layer.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO

AGENT = REPO / "base" / "usr" / "lib" / "netroot" / "agent"


@pytest.fixture
def overlay(tmp_path: Path) -> Iterator[Path]:
    """tmp_path/{lower,upper,work,root}: root is the overlay, on a tmpfs of its own."""
    if os.geteuid() != 0:
        pytest.fail("mounting an overlay needs root (the test suite runs as root)")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tmp_path)], check=True, timeout=30)
    try:
        for name in ("lower", "upper", "work", "root"):
            (tmp_path / name).mkdir()
        yield tmp_path
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "root")], check=False, timeout=30)
        subprocess.run(["umount", "-l", str(tmp_path)], check=False, timeout=30)


def mount_overlay(base: Path) -> None:
    options = f"lowerdir={base / 'lower'},upperdir={base / 'upper'},workdir={base / 'work'}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(base / "root")],
                   check=True, timeout=30)  # fmt: skip


def stale(base: Path) -> list[str]:
    env = {**os.environ, "NETROOT_LOWER": str(base / "lower"),
           "NETROOT_UPPER": str(base / "upper"), "NETROOT_OVERLAY_ROOT": str(base / "root"),
           "NETROOT_STATE_DIR": str(base / "state")}  # fmt: skip
    done = subprocess.run([str(AGENT), "stale"], env=env, capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    return done.stdout.splitlines()


def replace(path: Path, text: str) -> None:
    """As a live edit lands: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.rename(tmp, path)


def test_a_process_running_a_replaced_script_is_found(overlay: Path) -> None:
    script = overlay / "lower" / "usr" / "local" / "bin" / "loop"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n# v1\nwhile :; do sleep 1; done\n")
    script.chmod(0o755)
    (overlay / "lower" / "etc").mkdir()
    (overlay / "lower" / "etc" / "own").write_text("lower\n")
    mount_overlay(overlay)
    # a shell reading the script from the overlay, and a file of the writable layer held open
    runner = subprocess.Popen(["sh", str(overlay / "root" / "usr" / "local" / "bin" / "loop")])
    (overlay / "root" / "etc" / "own").write_text("copied up\n")
    holder = subprocess.Popen(["sh", "-c", "exec 3<\"$1\"; while :; do sleep 1; done", "sh",
                               str(overlay / "root" / "etc" / "own")])  # fmt: skip
    try:
        assert stale(overlay) == []  # nothing replaced yet
        old_inode = script.stat().st_ino
        replace(script, "#!/bin/sh\n# v2\nwhile :; do sleep 1; done\n")
        replace(overlay / "lower" / "etc" / "own", "lower again\n")  # hidden by the upper copy
        found = stale(overlay)
        assert found == [f"{runner.pid} {old_inode} /usr/local/bin/loop"]
        assert runner.poll() is None  # the shell runs on, on the old file
    finally:
        for process in (runner, holder):
            process.kill()
            process.wait(30)
