"""The original tool's users move over: their .def corpus validates, their %setup finds its
files, and their live_netroot_hosts becomes netroot.toml labels without being run.

Fedora and CentOS mirrors are not reachable here: the recipes are parsed and translated
(tests/unit/test_def_recipes.py checks the dnf side); %setup runs for real on a scratch tree.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from controller.build.builders.apptainer import ApptainerBuilder
from controller.build.builders.legacy import DefBuilder, host_rpm_writes, run_setup
from controller.core.errors import RecipeError
from controller.recipes import DefRecipe, load_recipe
from controller.recipes.inputs import setup_sources

REPO = Path(__file__).resolve().parents[2]
LEGACY = REPO / "tests" / "legacy"
CORPUS = {
    "centos7": "centos7-base.def",
    "centos7-lustre": "centos7-lustre.def",
    "centos7-hpcnode": "centos7-hpcnode.def",
    "centos8": "centos8-base.def",
    "fedora28": "fedora28-base.def",
    "fedora32": "fedora32-base.def",
}


def netroot(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def header(tmp_path: Path, recipes_dir: Path = LEGACY) -> str:
    return (
        f'state_dir = "{tmp_path / "state"}"\nrecipes_dir = "{recipes_dir}"\n'
        f'export_root = "{tmp_path / "export"}"\ntftp_root = "{tmp_path / "tftp"}"\n'
        f'overlays_dir = "{tmp_path / "overlays"}"\n\n'
    )


def snapshot(top: Path) -> dict[str, tuple[int, int, bytes]]:
    out = {}
    for path in sorted(top.rglob("*")):
        info = path.lstat()
        data = path.read_bytes() if stat.S_ISREG(info.st_mode) else b""
        out[str(path.relative_to(top))] = (info.st_mode, info.st_mtime_ns, data)
    return out


def test_the_legacy_corpus_validates(tmp_path: Path) -> None:
    config = tmp_path / "netroot.toml"
    config.write_text(
        header(tmp_path)
        + "".join(f'[labels.{label}]\nrecipe = "{name}"\n\n' for label, name in CORPUS.items())
    )
    done = netroot("--config", str(config), "validate")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"{config}: valid, 6 label(s)"
    rows = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()[2:]}
    assert rows == dict.fromkeys(CORPUS, "def")
    assert not (tmp_path / "state").exists()  # validate changes nothing


def test_setup_runs_in_the_recipes_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rsync -a base/ ${SINGULARITY_ROOTFS}` finds the base/ beside the .def, from anywhere."""
    recipe = load_recipe(LEGACY / "centos7-base.def")
    assert isinstance(recipe, DefRecipe)
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("NAME=test\n")
    monkeypatch.chdir(tmp_path)  # netroot's own working directory is elsewhere
    changed = run_setup(root, recipe, tmp_path / "build.log", {"NETROOT_LABEL": "centos7"})
    for name in ("etc/dracut.conf.d/02livecd.conf", "etc/sysconfig/mkinitrd"):
        assert (root / name).read_bytes() == (LEGACY / "base" / name).read_bytes()
    assert (root / "etc" / "os-release").read_text() == "NAME=test\n"
    assert changed >= 2
    assert not list(tmp_path.glob(".setup-*"))  # the overlay scratch is gone


def test_setup_without_its_base_tree_fails_naming_the_section(tmp_path: Path) -> None:
    """The same recipe copied away from its base/: the relative rsync fails, as it would have."""
    moved = tmp_path / "elsewhere" / "centos7-base.def"
    moved.parent.mkdir()
    moved.write_text((LEGACY / "centos7-base.def").read_text())
    recipe = load_recipe(moved)
    assert isinstance(recipe, DefRecipe)
    root = tmp_path / "rootfs"
    root.mkdir()
    with pytest.raises(RecipeError, match=rf"^{moved}:10: %setup: failed with status"):
        run_setup(root, recipe, tmp_path / "build.log", {})
    assert "elsewhere/base" in (tmp_path / "build.log").read_text()  # rsync names what it missed
    assert list(root.iterdir()) == []


def test_imported_labels_validate(tmp_path: Path) -> None:
    done = netroot("import-hosts", str(LEGACY / "live_netroot_hosts"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    labels = tomllib.loads(done.stdout)["labels"]
    assert list(labels) == list(CORPUS)
    assert labels["centos7"] == {
        "recipe": str(LEGACY / "centos7-base.def"),
        "export_path": str(LEGACY / "centos7-base"),
        "tftp_root": str(LEGACY / "tftp"),
        "extra_qemu": ["-display", "vnc=:1"],
    }
    assert labels["centos7-lustre"]["extra_qemu"] == [
        "-display",
        "vnc=:1",
        "-drive",
        "file=lustre0.img,index=0,media=disk,boot=off",
        "-drive",
        "file=lustre1.img,index=1,media=disk,boot=off",
    ]
    assert labels["centos7-hpcnode"]["rw"] is True and labels["fedora32"]["debug"] is True
    assert labels["centos8"]["extra_cmdline"] == "console=ttyS0 selinux=0"
    assert "rw" not in labels["centos7"] and "debug" not in labels["centos7"]  # RW=N, DEBUG=N
    # the `*)` arm's commands are reported with their lines, not run
    assert f"{LEGACY / 'live_netroot_hosts'}:48: not a variable assignment" in done.stderr
    config = tmp_path / "netroot.toml"
    config.write_text(header(tmp_path, tmp_path / "recipes") + done.stdout)
    checked = netroot("--config", str(config), "validate")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{config}: valid, 6 label(s)")


HOSTILE = """\
base=$PWD
X=$(touch {d}/made-by-subst)
rm -rf {d}/victim
Y=`touch {d}/made-by-backquote`
touch {d}/made-by-command; RW=Y
case $label in
    node1)
\tRECIPE=$base/node.def
\tNETROOT=$(touch {d}/made-in-arm)
\t;;
esac
"""


def test_a_label_file_holding_commands_is_read_not_run(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "victim").write_text("keep me\n")
    (work / "node.def").write_text("Bootstrap: debootstrap\nOSVersion: bookworm\n")
    hosts = work / "live_netroot_hosts"
    hosts.write_text(HOSTILE.format(d=work))
    before = snapshot(tmp_path)
    done = netroot("--json", "import-hosts", str(hosts), cwd=work)
    assert done.returncode == 0, done.stderr
    assert snapshot(tmp_path) == before  # nothing made, nothing removed, nothing written
    report = json.loads(done.stdout)
    assert report["labels"] == {"node1": {"recipe": str(work / "node.def"), "rw": True}}
    lines = {f["line"]: f["reason"] for f in report["findings"]}
    assert lines[2].startswith("X= uses command substitution $(...)")
    assert lines[3].startswith("not a variable assignment") and "rm -rf" in next(
        f["text"] for f in report["findings"] if f["line"] == 3
    )
    assert lines[4].startswith("Y= uses command substitution `...`")
    assert lines[5].startswith("not a variable assignment")
    assert lines[9].startswith("NETROOT= uses command substitution")
    assert report["written"] is None


def test_write_appends_new_labels_and_keeps_the_rest(tmp_path: Path) -> None:
    config = tmp_path / "netroot.toml"
    original = header(tmp_path) + (
        "# my own label, hand-written\n[labels.centos7]\n"
        'recipe = "centos7-base.def"\nkeep_versions = 5\n'
    )
    config.write_text(original)
    config.chmod(0o600)
    done = netroot(
        "--config", str(config), "import-hosts", str(LEGACY / "live_netroot_hosts"), "--write"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{config}: 5 label(s) added\n"
    assert "labels.centos7 exists: kept as it is" in done.stderr
    text = config.read_text()
    assert text.startswith(original)  # the rest of the file, byte for byte
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    data = tomllib.loads(text)
    assert data["labels"]["centos7"] == {"recipe": "centos7-base.def", "keep_versions": 5}
    # RECIPE inside the config's recipes_dir is written relative to it
    assert data["labels"]["fedora32"]["recipe"] == "fedora32-base.def"
    assert not [p for p in tmp_path.iterdir() if p.name != "netroot.toml"]  # no stage left
    assert netroot("--config", str(config), "validate").returncode == 0
    again = netroot(
        "--config", str(config), "import-hosts", str(LEGACY / "live_netroot_hosts"), "--write"
    )
    assert again.returncode == 0 and config.read_text() == text  # idempotent


def test_write_needs_a_config_file_and_a_bad_merge_changes_nothing(tmp_path: Path) -> None:
    env_free = netroot("import-hosts", str(LEGACY / "live_netroot_hosts"), "--write", cwd=tmp_path)
    assert env_free.returncode == 1
    assert env_free.stderr.startswith("netroot: error: import-hosts --write: name the config")
    config = tmp_path / "netroot.toml"
    bad = header(tmp_path) + 'labels = { other = { recipe = "centos8-base.def" } }\n'
    config.write_text(bad)
    done = netroot(
        "--config", str(config), "import-hosts", str(LEGACY / "live_netroot_hosts"), "--write"
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "cannot be appended" in done.stderr
    assert config.read_text() == bad
    missing = netroot("import-hosts", str(tmp_path / "nope"))
    assert missing.returncode == 1
    assert missing.stderr == f"netroot: error: {tmp_path / 'nope'}: label file not found\n"


def test_centos7_build_goes_as_far_as_this_host_allows(tmp_path: Path) -> None:
    """The real build path up to dnf: warnings and notices first, then a one-line reason.

    No CentOS mirror is reachable here, so the recipe points at an empty file:// one; on
    a host whose rpm cannot write bdb (Debian's) the build stops before any download.
    """
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    text = (LEGACY / "centos7-base.def").read_text()
    (recipes / "centos7-base.def").write_text(
        text.replace("http://vault.example.org/centos", f"file://{tmp_path}/no-mirror/centos")
    )
    config = tmp_path / "netroot.toml"
    config.write_text(
        f'base_dir = "{REPO / "base"}"\n'
        + header(tmp_path, recipes)
        + '[labels.centos7]\nrecipe = "centos7-base.def"\n'
    )
    done = netroot("--config", str(config), "build", "centos7")
    assert done.returncode == 1
    source = recipes / "centos7-base.def"
    assert f"base: warning: {source}:25: %post pipes a plaintext password to passwd" in done.stderr
    assert (
        f"base: notice: {source}:2: CentOS Linux 7 is end-of-life (since 2024-06-30): "
        "built from MirrorURL only; its rpm database is bdb in /var/lib/rpm"
    ) in done.stderr
    assert f"base: notice: {source}:31: %end closes %post" in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("netroot: error:")]
    assert len(errors) == 1
    if host_rpm_writes("bdb"):
        assert f"{source}: repositories: cannot fetch from the repositories" in errors[0]
    else:
        assert errors[0] == (
            f"netroot: error: build step 'base' failed: {source}: OSVersion: centos 7 keeps its "
            "rpm database in bdb, which this build host's rpm cannot write (allowed: a build "
            "host whose rpm writes it (EL 7 or 8, Fedora 32 or older), or a tree built there, "
            'adopted with builder = "import")'
        )
    versions = tmp_path / "state" / "images" / "centos7"
    assert not [p for p in versions.iterdir() if p.name[:1].isdigit()]


def test_an_edit_to_the_setup_tree_changes_the_build_inputs(tmp_path: Path) -> None:
    """The cached base tree is not reused when %setup's base/ beside the .def changes."""
    home = tmp_path / "recipes"
    shutil.copytree(LEGACY, home)
    recipe = load_recipe(home / "centos7-base.def")
    assert isinstance(recipe, DefRecipe)
    assert setup_sources(recipe) == [home / "base"]
    builder = DefBuilder(REPO / "base")
    before = builder.input_key(recipe, recipe.definition)
    assert builder.input_key(recipe, recipe.definition) == before
    (home / "base" / "etc" / "sysconfig" / "mkinitrd").write_text("NO_HOSTONLY=0\n")
    edited = builder.input_key(recipe, recipe.definition)
    assert edited != before
    (home / "base" / "etc" / "motd").write_text("hello\n")
    latest = builder.input_key(recipe, recipe.definition)
    assert latest not in (before, edited)
    (home / "unrelated.txt").write_text("not named by %setup\n")
    assert builder.input_key(recipe, recipe.definition) == latest


def test_apptainer_key_follows_the_setup_tree_too(tmp_path: Path) -> None:
    home = tmp_path / "recipes"
    shutil.copytree(LEGACY, home)
    (home / "node.toml").write_text('builder = "apptainer"\ndefinition = "centos7-base.def"\n')
    recipe = load_recipe(home / "node.toml")
    builder = ApptainerBuilder("apptainer", REPO / "base")
    before = builder.input_key(recipe, home / "node.toml")
    (home / "base" / "etc" / "motd").write_text("hello\n")
    assert builder.input_key(recipe, home / "node.toml") != before
