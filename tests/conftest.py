"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import Workspace, make_root_tree


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """An import-recipe label over a small real tree, nothing built yet."""
    ws = Workspace(tmp_path)
    make_root_tree(ws.tree)
    return ws.write()
