"""The subprocess helper: typed errors, minimal environment, no orphans after cancellation."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.core import proc
from controller.core.errors import ProcessError


def test_failure_carries_argv_status_and_stderr_tail() -> None:
    with pytest.raises(ProcessError) as info:
        proc.run(["sh", "-c", "echo first >&2; echo last words >&2; exit 3"])
    err = info.value
    assert err.argv[0] == "sh" and err.returncode == 3
    assert err.stderr_tail.splitlines() == ["first", "last words"]
    assert str(err) == "sh exited with status 3: last words"


def test_missing_command_is_a_typed_error() -> None:
    with pytest.raises(ProcessError, match="command not found"):
        proc.run(["netroot-no-such-tool"])


def test_environment_is_minimal_and_stdin_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETROOT_SECRET", "leak")
    out = proc.run(["sh", "-c", "env; cat"]).stdout
    assert "NETROOT_SECRET" not in out
    assert "PATH=/usr/local/sbin:" in out


def test_log_file_gets_command_and_output(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    with pytest.raises(ProcessError) as info:
        proc.run(["sh", "-c", "echo out; echo err >&2; exit 1"], log_file=log)
    text = log.read_text()
    assert text.startswith("$ sh -c ") and "out\n" in text and "err\n" in text
    assert info.value.stderr_tail.endswith("err")


async def test_cancellation_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    task = asyncio.create_task(proc.arun(["sh", "-c", script]))
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.05)
    grandchild = int(pidfile.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)
    assert _state(grandchild) in ("gone", "Z")  # dead (a zombie until its new parent reaps it)


def _state(pid: int) -> str:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return "gone"
    return next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))


def test_a_child_dies_with_netroot_even_when_netroot_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves no cleanup to run: the parent-death signal stops the child."""
    pidfile = tmp_path / "child.pid"
    script = (
        "import sys, time\n"
        "from controller.core import proc\n"
        "with proc.background(['sleep', '300']) as child:\n"
        f"    open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "    time.sleep(300)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(proc.PACKAGE_ROOT)}
    )
    try:
        child = int(_wait_text(pidfile))
        assert _state(child) not in ("gone", "Z")
        parent.kill()  # no handler, no finally: only the kernel can tell the child
        parent.wait(10)
        assert _wait_state(child, ("gone", "Z"))
    finally:
        parent.kill()
        parent.wait(10)


async def test_a_stopped_child_still_gets_to_clean_up(tmp_path: Path) -> None:
    """SIGTERM comes with SIGCONT, so a SIGSTOPped child runs its handler, not SIGKILL later."""
    marker = tmp_path / "cleaned-up"
    ready = tmp_path / "ready"
    script = f"trap 'echo yes > {marker}; exit 0' TERM; echo $$ > {ready}; kill -STOP $$; wait"
    task = asyncio.create_task(proc.arun(["sh", "-c", script]))
    pid = int(await asyncio.to_thread(_wait_text, ready))
    assert await asyncio.to_thread(_wait_state, pid, ("T",))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert marker.read_text() == "yes\n"


def test_child_netroot_runs_this_installation_not_the_working_directorys(tmp_path: Path) -> None:
    other = tmp_path / "controller"  # another checkout's package, in the working directory
    other.mkdir()
    (other / "__init__.py").write_text("")
    (other / "__main__.py").write_text("print('the other checkout')\n")
    naive = proc.run([sys.executable, "-m", "controller", "--version"], cwd=tmp_path)
    assert naive.stdout == "the other checkout\n"  # what `up` used to start
    ours = proc.run(proc.netroot_argv("--version"), env=proc.netroot_env(), cwd=tmp_path)
    assert ours.stdout.startswith("netroot ")


WAIT_S = 30.0  # a guard against hanging, not a timing assertion


def _wait_text(path: Path) -> str:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if path.exists() and (text := path.read_text().strip()):
            return text
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written")


def _wait_state(pid: int, states: tuple[str, ...]) -> bool:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if _state(pid) in states:
            return True
        time.sleep(0.05)
    return False
