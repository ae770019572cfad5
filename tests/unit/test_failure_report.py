"""The failure report a command prints with --json, and how the daemon reads a child's."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from controller.core import proc
from controller.core.errors import (
    BuildError,
    ConfigError,
    NetrootError,
    ProcessError,
    RecipeError,
    StoreError,
    VerifyError,
)
from controller.core.failure import Failure, FailureReport, kind_of, report
from controller.daemon.scheduler import child_failure


def test_a_failed_build_carries_its_step_and_log_tail() -> None:
    got = report(BuildError("base", "mmdebstrap exited with status 1", "E: no network"))
    assert got.model_dump() == {
        "error": {
            "kind": "build",
            "step": "base",
            "message": "build step 'base' failed: mmdebstrap exited with status 1",
            "log_tail": "E: no network",
        }
    }


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (RecipeError("demo.toml", "mirror", "cannot fetch"), "recipe"),
        (ConfigError("netroot.toml", "labels.x", "no such label"), "config"),
        (VerifyError("demo v1: index differs"), "verify"),
        (StoreError("demo: nothing to roll back to"), "store"),
        (ProcessError(["cp", "-a"], 1, "cp: no space"), "process"),
        (NetrootError("anything else"), "error"),
    ],
)
def test_other_errors_have_a_kind_and_no_step(exc: NetrootError, kind: str) -> None:
    got = report(exc).error
    assert (got.kind, got.step, got.message, got.log_tail) == (kind, None, str(exc), "")
    assert kind_of(exc) == kind


def test_the_report_is_one_line_that_reads_back() -> None:
    sent = report(BuildError("boot", "no kernel\nin /boot", "line 1\nline 2"))
    text = sent.to_json()
    assert "\n" not in text
    assert FailureReport.parse(f'{{"progress": 1}}\n{text}\n\n') == sent


@pytest.mark.parametrize("stdout", ["", "\n", "not json", '{"version": {}}', '{"error": {}}'])
def test_anything_else_is_no_report(stdout: str) -> None:
    assert FailureReport.parse(stdout) is None


def test_the_model_is_frozen_and_refuses_unknown_keys() -> None:
    failure = Failure(kind="build", step="base", message="m", log_tail="")
    with pytest.raises(ValidationError):
        setattr(failure, "step", "y")  # noqa: B010 - mypy would refuse the plain assignment
    with pytest.raises(ValidationError):
        FailureReport.model_validate(
            {"error": {"kind": "build", "step": None, "message": "m", "log_tail": "", "x": 1}}
        )
    with pytest.raises(ValidationError):
        Failure.model_validate({"kind": "nonsense", "step": None, "message": "m", "log_tail": ""})


def test_the_scheduler_reads_the_report_not_the_text() -> None:
    sent = report(BuildError("base", "mmdebstrap exited with status 1", "E: no network"))
    # stderr says something else: the report on stdout is what counts
    done = proc.Completed(["netroot"], 1, sent.to_json() + "\n", "netroot: error: other\n")
    assert child_failure(done) == sent.error


def test_a_child_that_crashed_is_told_by_its_last_line() -> None:
    done = proc.Completed(["netroot"], 1, "", "Traceback ...\nKeyError: 'x'\n")
    got = child_failure(done)
    assert (got.kind, got.step, got.message) == ("process", None, "KeyError: 'x'")
    assert got.log_tail == "Traceback ...\nKeyError: 'x'"
    killed = child_failure(proc.Completed(["netroot"], -9, "", ""))
    assert killed.message == "exited with status -9"
