"""ruff (check and format) and mypy --strict (over controller, tests and bench) are part of
the suite: a finding fails the tests."""

from __future__ import annotations

import subprocess
import sys

from support import REPO


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, check=False
    )


def test_ruff_finds_nothing() -> None:
    result = _run("ruff", "check", "--output-format", "concise", "controller", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_changes_nothing() -> None:
    result = _run("ruff", "format", "--check", "controller", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_finds_nothing() -> None:
    result = _run("mypy")  # files (controller, tests, bench) and --strict: pyproject.toml
    assert result.returncode == 0, result.stdout + result.stderr
