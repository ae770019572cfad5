"""An unreachable mirror: a clear error naming recipe and field, nothing served changes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from support import REPO, Workspace, make_root_tree


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when this returns


@pytest.mark.integration
def test_unreachable_mirror_names_recipe_and_field(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, extra_config=f'base_dir = "{REPO / "base"}"')
    make_root_tree(ws.tree)
    ws.write()
    ws.run("build", "demo", "--activate")
    active = ws.active()
    recipe = ws.root / "recipes" / "demo.toml"
    recipe.write_text(
        'distro = "debian"\nrelease = "12"\n'
        f'mirror = "http://127.0.0.1:{_closed_port()}/debian"\npackages = ["procps"]\n'
    )
    mounts_before = Path("/proc/self/mountinfo").read_text()
    result = ws.run("build", "demo", check=False)
    assert result.returncode == 1
    error = next(x for x in result.stderr.splitlines() if x.startswith("netroot: error:"))
    assert f"{recipe}: mirror: cannot fetch from http://127.0.0.1:" in error
    assert ws.active() == active
    assert Path("/proc/self/mountinfo").read_text() == mounts_before
    assert not list((ws.images() / ".staging").iterdir())
