"""Run a command inside an image tree, sandboxed, with nothing ever mounted on the host.

The command runs under `unshare --mount --uts --ipc --pid ...`: its hostname,
System V IPC and mounts are its own, and the kernel takes the mounts down with
the namespace when its last process exits, whether the command succeeded,
failed, or netroot was killed with SIGKILL. The PID namespace makes sure no
daemon started by a post script outlives the command.

What the tree sees of the host is minimal and read-only where it could reach
the host: a private /dev (a tmpfs holding null, zero, full, random, urandom,
tty, its own devpts instance and /dev/shm), a fresh read-only sysfs, a procfs
whose /proc/sys is read-only, and the host's resolv.conf read-only. The command
then runs without the capabilities that would undo that (remounting, loading
modules, raw I/O, the clock, the network setup). This keeps package and post
scripts from changing the host by accident; it is not a boundary against a
hostile root, which keeps CAP_MKNOD (dracut makes its initramfs' device nodes).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.build.builders import cow
from controller.core import proc
from controller.store import fsops

NSEXEC = Path(__file__).with_name("nsexec.py")
HOST_RESOLV_CONF = Path("/etc/resolv.conf")
MOUNT_POINTS = ("proc", "sys", "dev", "run")
# the character devices of the private /dev: name, major, minor (mode 0666, as on any host)
DEVICES = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
DEV_LINKS = (
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
)
# read-only inside procfs: the kernel's tunables (not sysrq-trigger: kernels without
# CONFIG_MAGIC_SYSRQ lack it, and a missing bind target would fail every run)
PROC_READ_ONLY = ("sys",)
# capabilities the command runs without: each could undo the sandbox or reach the host
# (only ones every supported kernel knows: setpriv fails on a name the kernel lacks)
DROPPED_CAPS = (
    "sys_admin",
    "sys_module",
    "sys_rawio",
    "sys_boot",
    "sys_time",
    "net_admin",
    "syslog",
    "mac_admin",
    "mac_override",
    "wake_alarm",
)


def dev_plan(dev: str) -> list[list[str]]:
    """A private /dev at dev: a tmpfs with the basic devices, a new devpts, a /dev/shm."""
    plan = [["mount", "-t", "tmpfs", "-o", "mode=0755,size=1m,nosuid,noexec", "tmpfs", dev]]
    plan += [
        ["mknod", "-m", "0666", f"{dev}/{name}", "c", str(major), str(minor)]
        for name, major, minor in DEVICES
    ]
    plan.append(["mkdir", "-m", "0755", f"{dev}/pts", f"{dev}/shm"])
    plan += [["ln", "-s", target, f"{dev}/{name}"] for name, target in DEV_LINKS]
    plan += [
        # newinstance: the image's ptys are not the host's, and the host's are not listed
        [
            "mount",
            "-t",
            "devpts",
            "-o",
            "newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec",
            "devpts",
            f"{dev}/pts",
        ],
        ["mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", f"{dev}/shm"],
    ]
    return plan


def mount_plan(root: Path, *, resolv_conf: Path | None = HOST_RESOLV_CONF) -> list[list[str]]:
    """The mounts made inside the namespace, in order (argv lists, no shell)."""
    r = os.fspath(root)
    plan = [["mount", "-t", "proc", "-o", "nosuid,nodev,noexec", "proc", f"{r}/proc"]]
    plan += [
        ["mount", "--bind", "-o", "ro", f"{r}/proc/{name}", f"{r}/proc/{name}"]
        for name in PROC_READ_ONLY
    ]
    # a fresh sysfs, not a bind of the host's: read-only, and without its submounts
    plan.append(["mount", "-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", f"{r}/sys"])
    plan += dev_plan(f"{r}/dev")
    plan.append(["mount", "-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "tmpfs", f"{r}/run"])
    if resolv_conf is not None:
        # read-only: a post script writing /etc/resolv.conf must not change the host's
        plan.append(["mount", "--bind", "-o", "ro", os.fspath(resolv_conf), f"{r}/etc/resolv.conf"])
    return plan


def unshare_argv(inner: Sequence[str]) -> list[str]:
    """unshare(1) giving inner its own mount, UTS, IPC and PID namespace, killed with its parent."""
    return [
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
        *inner,
    ]


def confined_argv(root: Path, argv: Sequence[str]) -> list[str]:
    """argv chrooted into root, without DROPPED_CAPS (setpriv runs on the host side)."""
    drop = ",".join(f"-{cap}" for cap in DROPPED_CAPS)
    return [
        "setpriv",
        "--bounding-set",
        drop,
        "--inh-caps",
        "-all",
        "--",
        "chroot",
        os.fspath(root),
        *argv,
    ]


@dataclass(frozen=True)
class Scratch:
    """Overlay layers for a copy-on-write run, beside the image on the same filesystem."""

    path: Path

    @property
    def upper(self) -> Path:
        """What the command changed."""
        return self.path / "upper"

    @property
    def work(self) -> Path:
        """overlayfs' work directory."""
        return self.path / "work"

    @property
    def merged(self) -> Path:
        """Where the overlay is mounted, inside the namespace only."""
        return self.path / "merged"


def chroot_argv(
    root: Path,
    argv: Sequence[str],
    *,
    resolv_conf: Path | None = HOST_RESOLV_CONF,
    scratch: Scratch | None = None,
) -> list[str]:
    """The full argv that runs argv chrooted into root with the mounts of mount_plan.

    With scratch, root is the read-only lower layer of an overlay mounted at
    scratch.merged, and the command runs there.
    """
    mounts: list[list[str]] = []
    top = root
    if scratch is not None:
        options = cow.overlay_options(root, scratch.upper, scratch.work)
        mounts.append(
            ["mount", "-t", "overlay", "-o", options, "overlay", os.fspath(scratch.merged)]
        )
        top = scratch.merged
    plan = {
        "mounts": mounts + mount_plan(top, resolv_conf=resolv_conf),
        "exec": confined_argv(top, argv),
    }
    return unshare_argv([sys.executable, "-I", os.fspath(NSEXEC), json.dumps(plan)])


@contextlib.contextmanager
def prepared(root: Path) -> Iterator[Path | None]:
    """Make the mount points exist; yield the resolv.conf to bind (None: leave it alone).

    A missing /etc/resolv.conf gets an empty placeholder as bind target for
    the duration of the run. A symlink (systemd-resolved, NetworkManager) is
    left as it is: binding through it would resolve on the host.
    """
    for name in MOUNT_POINTS:
        (root / name).mkdir(mode=0o755, exist_ok=True)
    target = root / "etc" / "resolv.conf"
    placeholder = False
    if not HOST_RESOLV_CONF.is_file() or not (root / "etc").is_dir():
        yield None
        return
    try:
        st = target.lstat()
    except FileNotFoundError:
        target.touch(mode=0o644)
        placeholder = True
        st = target.lstat()
    try:
        yield HOST_RESOLV_CONF if stat.S_ISREG(st.st_mode) else None
    finally:
        if placeholder:
            target.unlink(missing_ok=True)


def run(
    root: Path,
    argv: Sequence[str],
    *,
    log_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    check: bool = True,
    copy_on_write: bool = False,
) -> proc.Completed:
    """Run argv inside the image at root through proc.run.

    copy_on_write: the command's changes reach root by rename only (see
    controller.build.builders.cow), for trees that share inodes with others.
    """
    with prepared(root) as resolv_conf:
        if not copy_on_write:
            return proc.run(
                chroot_argv(root, argv, resolv_conf=resolv_conf),
                log_file=log_file,
                env=env,
                stdin=stdin,
                check=check,
            )
        scratch = Scratch(root.parent / f".cow-{uuid.uuid4().hex[:12]}")
        try:
            for d in (scratch.upper, scratch.work, scratch.merged):
                d.mkdir(parents=True)
            done = proc.run(
                chroot_argv(root, argv, resolv_conf=resolv_conf, scratch=scratch),
                log_file=log_file,
                env=env,
                stdin=stdin,
                check=check,
            )
            cow.merge_upper(scratch.upper, root)
            return done
        finally:
            fsops.remove_tree(scratch.path)
