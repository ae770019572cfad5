"""The subprocess helper: typed errors, minimal environment, no orphans after cancellation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from controller import proc
from controller.errors import ProcessError


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
