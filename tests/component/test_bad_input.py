"""Bad config, recipe or label name: one line naming file, field and what is allowed.

And nothing changes on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import Workspace, free_port, make_root_tree, snapshot


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("netroot: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("keep_versions = 0", ["labels.demo.keep_versions", "greater than or equal to 1"]),
        ('activation = "sometimes"', ["labels.demo.activation", "'auto', 'manual' or 'canary'"]),
        ('colour = "blue"', ["labels.demo.colour", "unknown field", "allowed: recipe, rw"]),
    ],
)
def test_bad_label_field(workspace: Workspace, edit: str, expected: list[str]) -> None:
    workspace.run("build", "demo", "--activate")
    text = workspace.config.read_text()
    key = edit.split(" = ", maxsplit=1)[0]
    text = text.replace("keep_versions = 3", edit) if key == "keep_versions" else text + edit
    workspace.config.write_text(text + "\n")
    before = snapshot(workspace.root)
    for command in (["validate"], ["build", "demo"], ["activate", "demo"], ["gc", "demo"]):
        result = workspace.run(*command, check=False)
        assert result.returncode == 1
        line = _one_error_line(result.stderr)
        assert str(workspace.config) in line
        for part in expected:
            assert part in line
    assert snapshot(workspace.root) == before


def test_bad_label_name_in_config(workspace: Workspace) -> None:
    workspace.config.write_text(workspace.config.read_text() + '[labels."Node_1"]\nrecipe = "x"\n')
    result = workspace.run("validate", check=False)
    line = _one_error_line(result.stderr)
    assert f"{workspace.config}: labels.Node_1: invalid label name 'Node_1'" in line
    assert "allowed: 1-63 of a-z 0-9 . _ -" in line


@pytest.mark.parametrize("name", ["../etc", "UPPER", "_under", "a" * 64, "has space", ".hidden"])
def test_bad_label_name_on_command_line(workspace: Workspace, name: str) -> None:
    before = snapshot(workspace.root)
    result = workspace.run("build", name, check=False)
    assert result.returncode == 1
    line = _one_error_line(result.stderr)
    assert f"invalid label name {name!r}" in line and "allowed:" in line
    assert snapshot(workspace.root) == before


def test_unknown_label_lists_configured_ones(workspace: Workspace) -> None:
    line = _one_error_line(workspace.run("versions", "other", check=False).stderr)
    assert "labels.other: no such label (allowed: demo)" in line


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        ('builder = "import"\n', "source: required field is missing"),
        ('builder = "magic"\nsource = "x"\n', "builder: unknown builder"),
        ('builder = "import"\nsource = "../source-tree"\nextra = 1\n', "extra: unknown field"),
        ('builder = "import"\nsource = \n', "invalid TOML"),
        ('builder = "import"\nsource = "../no-such-tree"\n', "source:"),
    ],
)
def test_bad_recipe(workspace: Workspace, recipe: str, expected: str) -> None:
    workspace.run("build", "demo", "--activate")
    active = workspace.active()
    recipe_file = workspace.root / "recipes" / "demo.toml"
    recipe_file.write_text(recipe)
    before = snapshot(workspace.state)
    result = workspace.run("build", "demo", check=False)
    assert result.returncode == 1
    errors = [x for x in result.stderr.splitlines() if x.startswith("netroot: error:")]
    assert len(errors) == 1 and str(recipe_file) in errors[0] and expected in errors[0]
    assert snapshot(workspace.state) == before
    assert workspace.active() == active


def test_config_file_missing_or_not_toml(workspace: Workspace) -> None:
    workspace.config.unlink()
    line = _one_error_line(workspace.run("validate", check=False).stderr)
    assert line == f"netroot: error: {workspace.config}: config file not found"
    workspace.config.write_text('state_dir = "x"\nrecipes_dir = = 1\n')
    line = _one_error_line(workspace.run("validate", check=False).stderr)
    assert f"{workspace.config}: invalid TOML" in line and "line" in line


def test_boot_without_a_broker_says_so_at_once(tmp_path: Path) -> None:
    """`netroot boot --stop-after-report` with nothing listening on [mqtt]: one line, at
    once, naming the address and how to start a broker (not a boot to the timeout)."""
    port = free_port()  # nothing listens on it
    ws = Workspace(tmp_path, extra_config=f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n')
    make_root_tree(ws.tree)
    ws.write().run("build", "demo", "--activate")
    done = ws.run("boot", "demo", "--headless", "--stop-after-report", check=False)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"no MQTT broker answers on 127.0.0.1:{port}" in lines[0], lines
    assert "mosquitto -p" in lines[0]
