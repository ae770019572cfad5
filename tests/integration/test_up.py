"""`netroot up` runs broker, controller, build and the live event stream, then stops them all."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from support import REPO, Workspace, make_root_tree


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.integration
def test_up_builds_activates_streams_events_and_stops_everything(tmp_path: Path) -> None:
    port = _free_port()
    ws = Workspace(tmp_path, extra_config=f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n')
    make_root_tree(ws.tree)
    ws.write()
    result = subprocess.run(
        ws.argv("up", "demo", "--no-boot"),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"mosquitto on 127.0.0.1:{port}" in result.stderr
    version = ws.active()
    assert version is not None
    # The live stream printed the controller coming online and the activation.
    assert "controller.status" in result.stdout and "status=online" in result.stdout
    activated = [line for line in result.stdout.splitlines() if "activated" in line]
    assert any(version in line for line in activated), result.stdout
    # Nothing it started is left running.
    assert _processes_mentioning(str(ws.config)) == []
    assert _processes_mentioning(str(ws.state / "run" / "up" / "mosquitto.conf")) == []
