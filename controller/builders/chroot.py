"""Run a command inside an image tree, with nothing ever mounted on the host.

The command runs under `unshare --mount --propagation private --pid --fork
--kill-child`: /proc, /sys, /dev, /run and the host's resolv.conf are mounted
into the tree inside that private mount namespace only, so they are never
visible on the host, and the kernel takes them down with the namespace when its
last process exits, whether the command succeeded, failed, or netroot was
killed with SIGKILL. The PID namespace makes sure no daemon started by a post
script outlives the command.
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

from controller import fsops, proc
from controller.builders import cow

NSEXEC = Path(__file__).with_name("nsexec.py")
HOST_RESOLV_CONF = Path("/etc/resolv.conf")
MOUNT_POINTS = ("proc", "sys", "dev", "run")


def mount_plan(root: Path, *, resolv_conf: Path | None = HOST_RESOLV_CONF) -> list[list[str]]:
    """The mounts made inside the namespace, in order (argv lists, no shell)."""
    r = os.fspath(root)
    plan = [
        ["mount", "-t", "proc", "-o", "nosuid,nodev,noexec", "proc", f"{r}/proc"],
        ["mount", "--rbind", "/sys", f"{r}/sys"],
        ["mount", "--rbind", "/dev", f"{r}/dev"],
        ["mount", "-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "tmpfs", f"{r}/run"],
    ]
    if resolv_conf is not None:
        # read-only: a post script writing /etc/resolv.conf must not change the host's
        plan.append(["mount", "--bind", "-o", "ro", os.fspath(resolv_conf), f"{r}/etc/resolv.conf"])
    return plan


def unshare_argv(inner: Sequence[str]) -> list[str]:
    """unshare(1) giving inner a private mount and PID namespace, killed with its parent."""
    return ["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
            "--kill-child", "--", *inner]


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
    root: Path, argv: Sequence[str], *, resolv_conf: Path | None = HOST_RESOLV_CONF,
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
        mounts.append(["mount", "-t", "overlay", "-o", options, "overlay",
                       os.fspath(scratch.merged)])
        top = scratch.merged
    plan = {
        "mounts": mounts + mount_plan(top, resolv_conf=resolv_conf),
        "exec": ["chroot", os.fspath(top), *argv],
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
    controller.builders.cow), for trees that share inodes with others.
    """
    with prepared(root) as resolv_conf:
        if not copy_on_write:
            return proc.run(chroot_argv(root, argv, resolv_conf=resolv_conf),
                            log_file=log_file, env=env, stdin=stdin, check=check)
        scratch = Scratch(root.parent / f".cow-{uuid.uuid4().hex[:12]}")
        try:
            for d in (scratch.upper, scratch.work, scratch.merged):
                d.mkdir(parents=True)
            done = proc.run(chroot_argv(root, argv, resolv_conf=resolv_conf, scratch=scratch),
                            log_file=log_file, env=env, stdin=stdin, check=check)
            cow.merge_upper(scratch.upper, root)
            return done
        finally:
            fsops.remove_tree(scratch.path)
