"""The one way netroot runs a subprocess.

argv lists only (never a shell string carrying user data), stdin closed unless
input is given, an explicit minimal environment, the command logged with
shlex.join, the whole process group killed and reaped when the caller is
interrupted or cancelled, and a typed error carrying argv, status and the
stderr tail. Every child also gets SIGTERM when netroot itself dies, even by
SIGKILL (a parent-death signal), so nothing outlives the command that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeAlias

from controller.core.errors import ProcessError
from controller.core.log import get_logger

log = get_logger("proc")

SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TAIL_LINES = 30
_GRACE_SECONDS = 5.0

Arg: TypeAlias = str | os.PathLike[str]

# The directory holding this `controller` package: child netroot commands
# import it from here, not whatever the working directory holds.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)  # loaded now: the child may not import


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: SIGTERM when the parent goes (kept across exec)."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # The parent may have died between fork and prctl: then nobody signals us.
    if os.getppid() != parent:
        os._exit(1)


def _child_setup() -> Callable[[], None]:
    # preexec_fn runs Python between fork and exec, which is unsafe when it
    # imports or takes locks other threads may hold; this one only makes two
    # system calls through a libc handle loaded at import. Linux sends the
    # signal when the *thread* that forked exits: children are started from
    # the main thread or a long-lived worker thread, never a passing one.
    parent = os.getpid()
    return lambda: _die_with_parent(parent)


def netroot_argv(*args: Arg) -> list[str]:
    """argv of a child `netroot` command run by this interpreter and this package."""
    # -P: no working directory on sys.path, so a `controller` package lying
    # there (another checkout) never replaces ours; netroot_env() names ours.
    return [sys.executable, "-P", "-m", "controller", *to_argv(args)]


def netroot_env() -> dict[str, str]:
    """The extra environment of netroot_argv(): where this package is."""
    return {"PYTHONPATH": os.fspath(PACKAGE_ROOT)}


@dataclass(frozen=True)
class Completed:
    """A finished process: argv, status and captured output (empty when logged to a file)."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The minimal environment every subprocess starts from."""
    env = {"PATH": SEARCH_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/root"}
    if extra:
        env.update(extra)
    return env


def to_argv(argv: Sequence[Arg]) -> list[str]:
    """Paths become strings; nothing else is interpreted."""
    return [os.fspath(a) for a in argv]


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last lines of a text, for error messages."""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def file_tail(path: Path, lines: int = TAIL_LINES, max_bytes: int = 64 * 1024) -> str:
    """The last lines of a log file, reading at most max_bytes from its end."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return tail(f.read().decode(errors="replace"), lines)
    except OSError:
        return ""


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
        if sig == signal.SIGTERM:
            os.killpg(pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once resumed


def run(
    argv: Sequence[Arg],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
    stdin: bytes | None = None,
    log_file: Path | None = None,
    timeout: float | None = None,
) -> Completed:
    """Run argv to completion.

    With log_file, stdout and stderr are appended to that file (a build log)
    and the error carries the file's tail; otherwise both are captured.
    """
    args = to_argv(argv)
    log.debug("run", cmd=shlex.join(args))
    out: IO[bytes] | int = subprocess.PIPE
    sink: IO[bytes] | None = None
    if log_file is not None:
        sink = log_file.open("ab")
        sink.write(f"$ {shlex.join(args)}\n".encode())
        sink.flush()
        out = sink
    proc = _spawn(
        args,
        sink,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.PIPE if sink is None else subprocess.STDOUT,
        env=base_env(env),
        cwd=cwd,
    )
    try:
        stdout_b, stderr_b = proc.communicate(stdin, timeout=timeout)
    except BaseException:
        # Interrupted (Ctrl-C, timeout, exception in a thread): take the group down.
        _stop_group(proc)
        raise
    finally:
        if sink is not None:
            sink.close()
    stdout = (stdout_b or b"").decode(errors="replace")
    stderr = (stderr_b or b"").decode(errors="replace")
    if check and proc.returncode != 0:
        detail = file_tail(log_file) if log_file is not None else tail(stderr or stdout)
        raise ProcessError(args, proc.returncode, detail)
    return Completed(args, proc.returncode, stdout, stderr)


def _not_found(args: list[str]) -> ProcessError:
    return ProcessError(args, 127, f"{args[0]}: command not found")


_Stream: TypeAlias = IO[bytes] | int | None


def _spawn(
    args: list[str],
    sink: IO[bytes] | None,
    *,
    stdin: _Stream,
    stdout: _Stream,
    stderr: _Stream,
    env: Mapping[str, str],
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start args in a new session (its own process group); sink is closed if it cannot start."""
    try:
        return subprocess.Popen(
            args,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_child_setup(),  # noqa: PLW1509 (see _child_setup)
        )
    except FileNotFoundError as exc:
        if sink is not None:
            sink.close()
        raise _not_found(args) from exc


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL after a grace; reap the leader."""
    _kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def background(
    argv: Sequence[Arg],
    *,
    log_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    pipe_stdout: bool = False,
) -> Iterator[subprocess.Popen[bytes]]:
    """A long-running process for the length of a with-block, in its own session.

    Output goes to log_file (or this process's stdout and stderr; with
    pipe_stdout, stdout is the child's .stdout to read); on leaving the block
    the whole process group gets SIGTERM, then SIGKILL after a grace.
    """
    args = to_argv(argv)
    log.debug("background", cmd=shlex.join(args))
    sink = log_file.open("ab") if log_file is not None else None
    child = _spawn(
        args,
        sink,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if pipe_stdout else sink,
        stderr=sink,
        env=base_env(env),
    )
    try:
        yield child
    finally:
        _stop_group(child)
        if sink is not None:
            sink.close()
        if child.stdout is not None:
            child.stdout.close()


def run_interactive(argv: Sequence[Arg], *, env: Mapping[str, str] | None = None) -> Completed:
    """Run argv on this terminal: stdin, stdout and stderr inherited, same session.

    For `netroot shell` and the steps of `netroot up` only: every other
    command gets stdin closed and a new session. Ctrl-C belongs to the
    interactive program, so it is ignored here while the program runs; if
    this process is interrupted otherwise (SIGTERM or SIGHUP turned into an
    exception), the program gets SIGTERM and time to clean up.
    """
    args = to_argv(argv)
    log.debug("run interactive", cmd=shlex.join(args))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        try:
            setup = _child_setup()
            child = subprocess.Popen(args, env=base_env(env), preexec_fn=setup)  # noqa: PLW1509
        except FileNotFoundError as exc:
            raise _not_found(args) from exc
        try:
            returncode = child.wait()
        except BaseException:
            _stop_child(child, grace=STOP_GRACE_SECONDS)
            raise
    finally:
        signal.signal(signal.SIGINT, previous)
    return Completed(args, returncode, "", "")


# What an interactive step may take to stop (`netroot boot` stops its VM
# and NFS server, `netroot serve` flushes its outbox: 25 s by design).
STOP_GRACE_SECONDS = 40.0


def _stop_child(child: subprocess.Popen[bytes], *, grace: float) -> None:
    """SIGTERM one child (it shares our process group), SIGKILL after grace; reap it."""
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGTERM)
    while child.returncode is None:
        try:
            child.wait(grace)
        except subprocess.TimeoutExpired:
            child.kill()
            grace = 10.0
        except BaseException:  # noqa: S112 (another signal while waiting: keep reaping)
            continue


async def arun(
    argv: Sequence[Arg],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
    stdin: bytes | None = None,
) -> Completed:
    """Async run for the daemon; cancellation terminates and reaps the process group."""
    args = to_argv(argv)
    log.debug("run", cmd=shlex.join(args))
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=base_env(env),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_child_setup(),
        )
    except FileNotFoundError as exc:
        raise _not_found(args) from exc
    try:
        stdout_b, stderr_b = await proc.communicate(stdin)
    except asyncio.CancelledError:
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), _GRACE_SECONDS)
        except TimeoutError:
            _kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()
        raise
    returncode = proc.returncode if proc.returncode is not None else -1
    stdout, stderr = stdout_b.decode(errors="replace"), stderr_b.decode(errors="replace")
    if check and returncode != 0:
        raise ProcessError(args, returncode, tail(stderr or stdout))
    return Completed(args, returncode, stdout, stderr)
