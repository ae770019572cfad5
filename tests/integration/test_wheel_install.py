"""netroot installed from its wheel, outside the checkout: `python -m build` makes
an sdist and a wheel, a fresh venv installs the wheel, and that netroot validates
its built-in defaults (shipped recipes from the package) and builds an import label."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support import REPO, Workspace, make_root_tree

from controller.build.builders import basetree

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

# What the top of a checkout holds that is no input of the build (state, caches, git);
# only there: controller/build is a package.
UNBUILT = {".git", "var", "build", "dist", ".venv", ".mypy_cache", ".ruff_cache", "artifacts",
           ".pytest_cache", ".hypothesis"}  # fmt: skip


def _copy_checkout(dest: Path) -> Path:
    """The checkout as it is now (uncommitted edits too), without state or caches."""

    def skip(directory: str, names: list[str]) -> set[str]:
        top = Path(directory) == REPO
        return {
            n
            for n in names
            if (top and n in UNBUILT) or n == "__pycache__" or n.endswith(".egg-info")
        }

    shutil.copytree(REPO, dest, symlinks=True, ignore=skip)
    return dest


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _mode(wheel: zipfile.ZipFile, name: str) -> int:
    return wheel.getinfo(name).external_attr >> 16


def test_the_wheel_installed_outside_the_checkout_validates_and_builds(tmp_path: Path) -> None:
    source = _copy_checkout(tmp_path / "source")
    dist = tmp_path / "dist"
    # sdist first, then the wheel built from the unpacked sdist: both must be complete.
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(source)], cwd=tmp_path)
    (sdist,) = dist.glob("netroot-*.tar.gz")
    (wheel_path,) = dist.glob("netroot-*.whl")
    with zipfile.ZipFile(wheel_path) as wheel:
        names = set(wheel.namelist())
        assert "controller/shipped/recipes/debian12.toml" in names
        assert "controller/shipped/config/netroot.toml" in names
        assert "controller/shipped/systemd/netroot.service" in names
        for page in ("index.html", "status.css", "status.js"):  # the status page
            assert f"controller/daemon/web/static/{page}" in names
        agent = "controller/shipped/base/usr/lib/netroot/agent"
        assert _mode(wheel, agent) & stat.S_IXUSR

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "install", "-q", str(wheel_path)], cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NETROOT_CONFIG")}
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")  # the user rule's state, should it apply
    netroot = str(venv / "bin" / "netroot")

    # The built-in defaults: the shipped recipes, read from the installed package.
    report = json.loads(_run([netroot, "--json", "validate"], cwd=elsewhere, env=env))
    site = next((venv / "lib").glob("python3*/site-packages"))
    shipped = site / "controller" / "shipped"
    assert report["labels"]["debian12"]["recipe"] == str(shipped / "recipes" / "debian12.toml")

    paths = json.loads(_run([netroot, "--json", "status"], cwd=elsewhere, env=env))["paths"]
    assert paths["shipped"] == str(shipped)
    assert paths["base_dir"] == str(shipped / "base")
    if os.geteuid() == 0:
        assert (paths["state_rule"], paths["state_dir"]) == ("root", "/var/lib/netroot")
    else:
        assert paths["state_rule"] == "user"
        assert paths["state_dir"] == str(tmp_path / "xdg" / "netroot")
    # Installed, the package imports without PYTHONPATH (the dhcp-hook wrapper sets none).
    where = "from controller.core import shipped; print(shipped.import_path())"
    assert _run([str(venv / "bin" / "python"), "-c", where], cwd=elsewhere, env=env) == "None\n"

    # base/ as installed goes into images exactly as from the checkout: same modes, same files.
    installed = basetree.scan(Path(paths["base_dir"]))
    assert basetree.digest(installed) == basetree.digest(basetree.scan(REPO / "base"))

    # An import build with a config outside the checkout, verified.
    ws = Workspace(tmp_path / "ws", extra_config="[mqtt]\nenabled = false\n")
    make_root_tree(ws.tree)
    ws.write()
    config = ["--config", str(ws.config), "--json"]
    _run([netroot, *config, "validate"], cwd=elsewhere, env=env)
    built = json.loads(_run([netroot, *config, "build", "demo", "--activate"], elsewhere, env))
    version = built["version"]["version"]
    assert (ws.images() / version / "rootfs" / "etc" / "netroot" / "version").is_file()
    assert (ws.export_link / "etc" / "hostname").read_text() == "node\n"
    _run([netroot, *config, "verify", "demo", version, "--deep"], cwd=elsewhere, env=env)
    assert sdist.stat().st_size > 0
