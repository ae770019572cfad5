"""The rootovl dracut hook's configuration trees, run by a real sh with dracut's helpers stubbed.

The mount part needs an initramfs (the boot test covers it); `rootovlcfg=`
handling is plain file work and is checked here: reverse order (the first
name wins), `.rootovldel` deletions, names that could escape refused.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "base/usr/lib/dracut/modules.d/90rootovl"
STUBS = """
getarg() { :; }
getargbool() { return 1; }
warn() { echo "warn: $*" >&2; }
info() { :; }
die() { echo "die: $*" >&2; exit 1; }
"""


def run_hook(lower: Path, newroot: Path, cfg: str) -> subprocess.CompletedProcess[str]:
    script = f'{STUBS}\n. "{MODULE / "rootovl-mount.sh"}"\nrootovl_apply_all "$1"\n'
    return subprocess.run(
        ["sh", "-c", script, "hook", cfg],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "ROOTOVL_LOWER": str(lower), "NEWROOT": str(newroot)},
    )


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    lower, newroot = tmp_path / "image", tmp_path / "root"
    for name, content in (("a", "from a\n"), ("b", "from b\n")):
        tree = lower / "etc/rootovl" / name
        (tree / "etc").mkdir(parents=True)
        (tree / "etc" / "node.conf").write_text(content)
        (tree / "etc" / f"only-{name}").write_text(name)
    (newroot / "etc").mkdir(parents=True)
    (newroot / "etc" / "node.conf").write_text("image\n")
    (newroot / "etc" / "unwanted").write_text("x")
    (newroot / "var/cache").mkdir(parents=True)
    (newroot / "var/cache/big").write_text("x")
    (lower / "etc/rootovl/b/.rootovldel").write_text(
        "# comment\n/etc/unwanted\nvar/cache\n/etc/../etc/node.conf\n"
    )
    return lower, newroot


def test_first_name_wins_and_deletions_apply(trees: tuple[Path, Path]) -> None:
    lower, newroot = trees
    done = run_hook(lower, newroot, "a,b")
    assert done.returncode == 0, done.stderr
    assert (newroot / "etc/node.conf").read_text() == "from a\n"  # b applied first, then a
    assert (newroot / "etc/only-a").is_file() and (newroot / "etc/only-b").is_file()
    assert not (newroot / "etc/unwanted").exists()
    assert not (newroot / "var/cache").exists()
    assert not (newroot / ".rootovldel").exists()
    assert "refusing to delete /etc/../etc/node.conf" in done.stderr


def test_unknown_and_hostile_names_are_ignored(trees: tuple[Path, Path]) -> None:
    lower, newroot = trees
    done = run_hook(lower, newroot, "missing,..,b")
    assert done.returncode == 0, done.stderr
    assert "no configuration tree /etc/rootovl/missing" in done.stderr
    assert "ignoring configuration name '..'" in done.stderr
    assert (newroot / "etc/node.conf").read_text() == "from b\n"


@pytest.mark.parametrize(
    "script", sorted([*MODULE.glob("*.sh"), REPO / "base/usr/lib/netroot/boot-iface"], key=str)
)
def test_base_scripts_parse(script: Path) -> None:
    shell = "bash" if script.read_text().startswith("#!/bin/bash") else "sh"
    done = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
