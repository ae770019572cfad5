"""The layers of controller/ (pyproject's import-linter contract) hold, and the check can fail."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from support import REPO


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("lint-imports")
    assert tool is not None, "import-linter is in the test extra: pip install -e '.[test]'"
    return subprocess.run(
        [tool, "--no-cache", "--no-logo"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
    )


def test_layers_contract_is_kept() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 1 kept, 0 broken." in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    shutil.copytree(REPO / "controller", tmp_path / "controller")
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    # the store reaching up into serving: what the layers forbid
    (tmp_path / "controller" / "store" / "upward.py").write_text(
        "from controller.serve import nfs\n\nNFS = nfs\n"
    )
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "controller.store is not allowed to import controller.serve" in result.stdout
    assert "controller.store.upward -> controller.serve.nfs" in result.stdout
