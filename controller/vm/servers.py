"""Processes `netroot boot` supervises: each a task running proc.arun, stopped on exit.

Cancelling the task makes proc.arun terminate the process group and reap
it, so leaving the context manager, by return, exception, Ctrl-C or
timeout, leaves nothing running. A registry of run directories lets the
next `netroot boot` clean up after one that was killed outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType

from controller.config.models import Config
from controller.core import proc
from controller.core.errors import NetrootError
from controller.core.log import get_logger
from controller.serve import nfs
from controller.store import fsops

log = get_logger("bootvm")

OWNER_FILE = "owner.pid"
PID_FILES = ("qemu.pid", "ganesha.pid")


class ServerError(NetrootError):
    """A server `netroot boot` needs did not start, or stopped early."""


class Background:
    """One long-running process as a named task."""

    def __init__(self, name: str, argv: Sequence[proc.Arg]) -> None:
        self.name = name
        self.argv = list(argv)
        self.task: asyncio.Task[proc.Completed] | None = None

    async def __aenter__(self) -> Background:
        self.task = asyncio.create_task(proc.arun(self.argv, check=False), name=self.name)
        await asyncio.sleep(0)  # let it spawn
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Terminate and reap it (no-op once it has exited)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    @property
    def exited(self) -> bool:
        """True once the process ended."""
        return self.task is not None and self.task.done()

    def outcome(self) -> str:
        """Exit status and the last line of stderr, for an error message."""
        if self.task is None or not self.task.done() or self.task.cancelled():
            return "still running"
        exc = self.task.exception()
        if exc is not None:
            return str(exc)
        done = self.task.result()
        last = proc.tail(done.stderr or done.stdout, 3).replace("\n", " | ")
        return f"exited with status {done.returncode}: {last}".rstrip(": ")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def broker_listens(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """Whether something accepts TCP connections on host:port (the broker the VM reports to)."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


async def wait_port(
    host: str, port: int, server: Background, *, within_s: float, log_file: Path
) -> None:
    """Until host:port accepts a connection; ServerError if the server dies or time runs out."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if server.exited:
            raise ServerError(
                f"{server.name} stopped before serving: {server.outcome()};"
                f" log: {proc.file_tail(log_file, 5)}"
            )
        try:
            _reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise ServerError(f"{server.name} did not listen on {host}:{port} within {within_s:.0f} s")


@contextlib.asynccontextmanager
async def lab_ganesha(
    config: Config, label: str, run_dir: Path, *, within_s: float = 60
) -> AsyncIterator[nfs.LabGanesha]:
    """A loopback ganesha.nfsd exporting every version of label, registered for reloads."""
    port = free_port()
    lab = nfs.LabGanesha(
        pid=0,
        config_file=run_dir / "ganesha.conf",
        port=port,
        labels=(label,),
        recovery_root=run_dir / "ganesha-recovery",
    )
    lab.recovery_root.mkdir(parents=True, exist_ok=True)
    fsops.write_atomic(lab.config_file, nfs.render_lab(config, lab).encode(), durable=False)
    log_file, pid_file = run_dir / "ganesha.log", run_dir / "ganesha.pid"
    argv = nfs.ganesha_argv(lab.config_file, log_file, pid_file)
    async with Background("ganesha", argv) as server:
        await wait_port("127.0.0.1", port, server, within_s=within_s, log_file=log_file)
        pid = nfs.read_pid(pid_file)
        if pid is None:
            raise ServerError(f"ganesha.nfsd wrote no pid to {pid_file}")
        lab = lab.model_copy(update={"pid": pid})
        record = nfs.register_lab(config, run_dir.name, lab)
        try:
            # An activation between the first render and the registration
            # would have missed this instance: bring it up to date once.
            nfs.apply_labs(config, nfs.Applied())
            yield lab
        finally:
            record.unlink(missing_ok=True)


def runs_dir(config: Config) -> Path:
    """Where `netroot boot` keeps one directory per running VM."""
    return config.state_dir / "run" / "boot"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline_mentions(pid: int, text: str) -> bool:
    try:
        return text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def new_run_dir(config: Config, label: str) -> Path:
    """A fresh run directory owned by this process (stale ones of dead owners are swept first)."""
    sweep_stale_runs(config)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    run_dir = runs_dir(config) / f"{label}-{stamp}-{os.getpid()}"
    run_dir.mkdir(parents=True)
    (run_dir / OWNER_FILE).write_text(f"{os.getpid()}\n")
    return run_dir


SUN_PATH_MAX = 107  # bytes of a unix socket's path, its NUL aside (sockaddr_un)


def console_socket(run_dir: Path) -> Path:
    """qemu's console socket: in the run directory, or, when that path is too long for a
    unix socket (a deep state_dir), in a short private directory named after it."""
    path = run_dir / "console.sock"
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        return path
    digest = hashlib.sha256(os.fsencode(run_dir)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"netroot-console-{digest}" / "console.sock"


def remove_run_dir(run_dir: Path) -> None:
    """The run directory and the console socket's own directory, if it has one."""
    socket_dir = console_socket(run_dir).parent
    if socket_dir != run_dir:
        fsops.remove_tree(socket_dir)
    fsops.remove_tree(run_dir)


def sweep_stale_runs(config: Config) -> list[Path]:
    """Stop what a killed `netroot boot` left running and remove its run directory."""
    removed = []
    base = runs_dir(config)
    if not base.is_dir():
        return []
    for run_dir in sorted(base.iterdir()):
        owner = nfs.read_pid(run_dir / OWNER_FILE)
        if owner is not None and _alive(owner):
            continue
        for name in PID_FILES:
            pid = nfs.read_pid(run_dir / name)
            # Only a process started for this run directory is signalled.
            if pid is not None and _cmdline_mentions(pid, os.fspath(run_dir)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        remove_run_dir(run_dir)
        removed.append(run_dir)
    if removed:
        log.info("swept stale boot runs", runs=[str(p) for p in removed])
    return removed
