"""With --json a failed command prints one failure report on stdout; the daemon reads it."""

from __future__ import annotations

import json
import subprocess

from support import Workspace

from controller.core import proc
from controller.core.failure import FailureReport
from controller.daemon.scheduler import child_failure


def _completed(result: subprocess.CompletedProcess[str]) -> proc.Completed:
    return proc.Completed(
        [str(a) for a in result.args], result.returncode, result.stdout, result.stderr
    )


def test_a_failed_build_reports_its_step_to_the_daemon(workspace: Workspace) -> None:
    for kernel in (workspace.tree / "boot").glob("vmlinuz*"):
        kernel.unlink()  # the boot step finds no kernel
    result = workspace.run("--json", "build", "demo", check=False)
    assert result.returncode == 1
    (line,) = result.stdout.splitlines()  # one object, one line, nothing else on stdout
    sent = json.loads(line)
    assert set(sent) == {"error"}
    assert set(sent["error"]) == {"kind", "step", "message", "log_tail"}
    assert sent["error"]["kind"] == "build"
    assert sent["error"]["step"] == "boot"
    assert sent["error"]["message"].startswith("build step 'boot' failed: demo: no kernel")
    assert "netroot: error:" not in result.stderr  # said once, for programs
    # What the scheduler makes of the child's output: kind and step from the report.
    failed = child_failure(_completed(result))
    assert FailureReport(error=failed).model_dump() == sent

    # Without --json: the one line for people, and the log tail, as before.
    plain = workspace.run("build", "demo", check=False)
    assert plain.returncode == 1
    assert plain.stdout == ""
    assert f"netroot: error: {sent['error']['message']}\n" in plain.stderr
    assert "--- last lines of the build log ---" in plain.stderr


def test_every_command_reports_its_error_alike(workspace: Workspace) -> None:
    unknown = workspace.run("--json", "versions", "nolabel", check=False)
    assert unknown.returncode == 1
    error = json.loads(unknown.stdout)["error"]
    assert (error["kind"], error["step"], error["log_tail"]) == ("config", None, "")
    assert "labels.nolabel: no such label" in error["message"]
    plain = workspace.run("versions", "nolabel", check=False)
    assert (plain.returncode, plain.stdout) == (1, "")
    assert plain.stderr == f"netroot: error: {error['message']}\n"

    # --json after the command name works the same
    unbuilt = workspace.run("verify", "demo", "--json", check=False)
    assert unbuilt.returncode == 1
    assert json.loads(unbuilt.stdout) == {
        "error": {
            "kind": "store",
            "step": None,
            "message": "demo: no active version to verify",
            "log_tail": "",
        }
    }
    plain = workspace.run("verify", "demo", check=False)
    assert (plain.returncode, plain.stderr) == (
        1,
        "netroot: error: demo: no active version to verify\n",
    )


def test_a_usage_error_is_a_report_too(workspace: Workspace) -> None:
    bad = workspace.run("--json", "build", check=False)
    assert bad.returncode == 2
    assert json.loads(bad.stdout)["error"] == {
        "kind": "usage",
        "step": None,
        "message": "netroot build: the following arguments are required: label",
        "log_tail": "",
    }
    assert bad.stderr == ""
    plain = workspace.run("build", check=False)
    assert (plain.returncode, plain.stdout) == (2, "")
    assert plain.stderr.startswith("usage: netroot build")
    assert plain.stderr.endswith(
        "netroot build: error: the following arguments are required: label\n"
    )
