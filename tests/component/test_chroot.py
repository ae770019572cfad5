"""The chroot helper: commands run inside the tree; nothing is ever mounted on the host."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.build.builders import chroot
from controller.core.errors import ProcessError

TOOLS = ("sh", "cat", "sleep", "touch", "ls")


def _libraries(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
    return re.findall(r"(/\S+)", out)


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    """A root tree holding a few host binaries and their libraries."""
    root = tmp_path / "image"
    (root / "etc").mkdir(parents=True)
    (root / "bin").mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found is not None
        real = os.path.realpath(found)
        shutil.copy2(real, root / "bin" / tool)
        for lib in _libraries(real):
            dest = root / lib.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib, dest)
    return root


def host_mounts_under(path: Path) -> list[str]:
    """Mount points under path as the host (this test's process) sees them."""
    prefix = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def test_mount_plan_is_argv_lists() -> None:
    plan = chroot.mount_plan(Path("/img"))
    assert plan[0] == ["mount", "-t", "proc", "-o", "nosuid,nodev,noexec", "proc", "/img/proc"]
    assert ["mount", "--bind", "-o", "ro", "/img/proc/sys", "/img/proc/sys"] in plan
    assert ["mount", "-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", "/img/sys"] in plan
    assert ["mknod", "-m", "0666", "/img/dev/null", "c", "1", "3"] in plan
    assert plan[-1] == ["mount", "--bind", "-o", "ro", "/etc/resolv.conf", "/img/etc/resolv.conf"]
    # nothing of the host's /dev or /sys is bound in
    assert not [m for m in plan if "--rbind" in m or "/dev" in m[:-1] or "/sys" in m[:-1]]
    argv = chroot.chroot_argv(Path("/img"), ["/bin/sh", "-c", "true"], resolv_conf=None)
    assert argv[:10] == [
        "unshare",
        "--mount",
        "--uts",
        "--ipc",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
        "--",
    ]
    command = json.loads(argv[-1])["exec"]
    assert command[0] == "setpriv" and "-sys_admin" in command[command.index("--bounding-set") + 1]
    assert command[-5:] == ["chroot", "/img", "/bin/sh", "-c", "true"]


def test_command_sees_mounts_inside_only(tiny_root: Path, tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    done = chroot.run(tiny_root, ["/bin/cat", "/proc/self/mountinfo"], log_file=log)
    assert done.returncode == 0
    inside = log.read_text()
    for point in ("/proc", "/sys", "/dev", "/run"):
        assert f" {point} " in inside, point
    assert host_mounts_under(tiny_root) == []
    assert not (tiny_root / "etc" / "resolv.conf").exists()  # placeholder removed


def test_failure_leaves_no_mount(tiny_root: Path) -> None:
    with pytest.raises(ProcessError) as info:
        chroot.run(tiny_root, ["/bin/sh", "-c", "exit 3"])
    assert info.value.returncode == 3
    assert host_mounts_under(tiny_root) == []


def test_sigkill_of_the_caller_leaves_no_mount(tiny_root: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from controller.build.builders import chroot; "
        "chroot.run(Path(sys.argv[1]), ['/bin/sh', '-c', 'touch /ready; sleep 60'])"
    )
    caller = subprocess.Popen([sys.executable, "-c", code, str(tiny_root)], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not (tiny_root / "ready").exists():
            assert time.monotonic() < deadline, "command never started"
            assert caller.poll() is None, "caller exited early"
            time.sleep(0.05)
        # while the command runs: its mounts exist, but never in the host's namespace
        assert host_mounts_under(tiny_root) == []
        os.killpg(caller.pid, signal.SIGKILL)
        caller.wait()
        assert host_mounts_under(tiny_root) == []
    finally:
        if caller.poll() is None:
            os.killpg(caller.pid, signal.SIGKILL)
            caller.wait()
        # the orphaned unshare (own session, like every proc.run child) goes the same way
        for pid in _processes_naming(tiny_root):
            os.kill(pid, signal.SIGKILL)
    assert host_mounts_under(tiny_root) == []


def _processes_naming(path: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"unshare") and str(path).encode() in cmdline:
                found.append(int(entry.name))
    return found


def test_copy_on_write_merges_every_kind_of_change(tiny_root: Path, tmp_path: Path) -> None:
    etc = tiny_root / "etc"
    (etc / "keep").write_text("keep")
    (etc / "edit").write_text("before\n")
    (etc / "remove").write_text("x")
    (tiny_root / "data" / "old").mkdir(parents=True)
    (tiny_root / "data" / "old" / "file").write_text("old")
    twin = tmp_path / "twin"  # a hard link, as a cloned version would hold
    os.link(etc / "edit", twin)
    script = (
        "echo after >> /etc/edit; : > /etc/new; cat /etc/remove > /etc/copy; "
        "cat /etc/keep > /dev/null"
    )
    chroot.run(tiny_root, ["/bin/sh", "-c", script], copy_on_write=True)
    assert (etc / "edit").read_text() == "before\nafter\n"
    assert twin.read_text() == "before\n"
    assert (etc / "new").is_file() and (etc / "copy").read_text() == "x"
    assert (etc / "keep").read_text() == "keep"
    assert not [n for n in os.listxattr(etc / "edit") if n.startswith("trusted.overlay.")]
    assert host_mounts_under(tiny_root.parent) == []
    assert not list(tiny_root.parent.glob(".cow-*"))


def test_merge_upper_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    from controller.build.builders import cow

    root, upper = tmp_path / "root", tmp_path / "upper"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "deleted").write_text("x")
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "sub" / "stale").write_text("x")
    (root / "dir" / "kept").write_text("k")
    (upper / "etc").mkdir(parents=True)
    os.mknod(upper / "etc" / "deleted", 0o600 | stat.S_IFCHR, os.makedev(0, 0))
    (upper / "dir" / "sub").mkdir(parents=True)
    os.setxattr(upper / "dir" / "sub", cow.OPAQUE_XATTR, b"y")
    (upper / "dir" / "sub" / "fresh").write_text("f")
    assert cow.merge_upper(upper, root) == 5
    assert not (root / "etc" / "deleted").exists()
    assert sorted(p.name for p in (root / "dir" / "sub").iterdir()) == ["fresh"]
    assert (root / "dir" / "kept").read_text() == "k"


def test_post_script_cannot_write_the_hosts_resolv_conf(tiny_root: Path) -> None:
    before = Path("/etc/resolv.conf").read_bytes()
    with pytest.raises(ProcessError, match="Read-only file system"):
        chroot.run(tiny_root, ["/bin/sh", "-c", "echo nameserver 203.0.113.1 > /etc/resolv.conf"])
    assert Path("/etc/resolv.conf").read_bytes() == before


HOSTILE = (
    "touch /dev/x; "
    "echo 1 > /proc/sys/kernel/hostname || echo proc-sys-ro; "
    "echo 3 > /proc/sys/vm/drop_caches || echo drop-caches-refused; "
    "hostname foo || echo hostname-refused; "
    "mount -o remount,rw /sys || echo remount-refused; "
    "mount -t tmpfs tmpfs /sys || echo mount-refused; "
    "touch /sys/x || echo sys-ro; "
)
USABLE = (
    ": > /dev/null && echo null-ok; "
    "test -c /dev/zero && test -c /dev/random && test -c /dev/tty && echo nodes-ok; "
    "head -c 16 /dev/urandom | wc -c; "
    "echo x > /dev/full || echo full-ENOSPC; "
    "test -c /dev/pts/ptmx && test -L /dev/ptmx && test -d /dev/shm && echo pts-ok; "
    "ls -l /proc/self/ns/uts /proc/self/ns/ipc; ls /dev"
)


def host_sentinels() -> dict[str, object]:
    """What a sandboxed command must not change on the host."""
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


@pytest.fixture
def sandbox_root(tiny_root: Path) -> Path:
    """tiny_root with what the hostile and the usable script call."""
    _add_tools(tiny_root, ("hostname", "mount", "head", "wc", "test"))
    return tiny_root


def _add_tools(root: Path, tools: tuple[str, ...]) -> None:
    for tool in tools:
        found = shutil.which(tool)
        assert found is not None, tool
        real = os.path.realpath(found)
        shutil.copy2(real, root / "bin" / tool)
        for lib in _libraries(real):
            dest = root / lib.lstrip("/")
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(lib, dest)


@pytest.mark.parametrize("copy_on_write", [False, True], ids=["in-place", "post-script"])
def test_a_command_cannot_change_the_hosts_dev_sys_or_hostname(
    sandbox_root: Path, tmp_path: Path, copy_on_write: bool
) -> None:
    before = host_sentinels()
    assert "x" not in before["dev"]  # type: ignore[operator]
    log = tmp_path / "run.log"
    done = chroot.run(
        sandbox_root, ["/bin/sh", "-c", HOSTILE + USABLE], log_file=log, copy_on_write=copy_on_write
    )
    assert done.returncode == 0
    out = log.read_text()
    assert host_sentinels() == before
    for refused in (
        "proc-sys-ro",
        "drop-caches-refused",
        "hostname-refused",
        "remount-refused",
        "mount-refused",
        "sys-ro",
    ):
        assert refused in out.splitlines(), refused
    for usable in ("null-ok", "nodes-ok", "16", "full-ENOSPC", "pts-ok"):
        assert usable in out.splitlines(), usable
    # the private /dev held the file: listed inside, gone with the namespace
    assert "x" in out.splitlines()
    for ns in ("uts", "ipc"):
        host = os.readlink(f"/proc/self/ns/{ns}")
        inside = re.search(rf"/proc/self/ns/{ns} -> ({ns}:\[\d+\])", out)
        assert inside is not None and inside.group(1) != host, ns
    assert not (sandbox_root / "dev" / "x").exists()
    assert sorted(os.listdir(sandbox_root / "dev")) == []
    assert host_mounts_under(tmp_path) == []
