"""The daemon's lock file: one `netroot serve` per state directory, and who holds it."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = "daemon.lock"


def lock_path(state_dir: Path) -> Path:
    """<state_dir>/daemon.lock."""
    return state_dir / LOCK_NAME


@contextlib.contextmanager
def exclusive(path: Path, about: str = "") -> Iterator[bool]:
    """Try to hold the lock for the block; yields False if another process holds it.

    The file names the holder's pid, then `about` (the daemon: the role it serves).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{about}\n".encode(), 0)
        yield True
    finally:
        os.close(fd)  # the kernel drops the lock with the descriptor, even on SIGKILL


def holder_pid(path: Path) -> int | None:
    """The pid of the running daemon, or None when no daemon holds the lock."""
    held = _held(path)
    if held is None:
        return None
    first = held.split("\n", 1)[0]
    return int(first) if first.isdigit() else -1


def holder_about(path: Path) -> str | None:
    """What the running daemon wrote after its pid (its role), or None when none runs
    (or the lock cannot be read: a user without access to the state directory)."""
    try:
        held = _held(path)
    except OSError:
        return None
    if held is None:
        return None
    lines = held.split("\n")
    return lines[1] if len(lines) > 1 else ""


def _held(path: Path) -> str | None:
    """The lock file's text while a process holds the lock, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 256, 0).decode(errors="replace")
        return None  # we got the lock: nobody serves
    finally:
        os.close(fd)
