"""Post-package customisation on a real (tiny) tree: files, timezone, post script, errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from controller.build.builders import customize, pkgstage
from controller.core.errors import RecipeError
from controller.recipes import MmdebstrapRecipe
from controller.recipes.load import parse_recipe


def tiny_root(root: Path) -> Path:
    """A root tree holding sh, cat and touch with their libraries."""
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    for tool in ("sh", "cat", "touch"):
        real = os.path.realpath(shutil.which(tool) or tool)
        shutil.copy2(real, root / "bin" / tool)
        out = subprocess.run(["ldd", real], capture_output=True, text=True, check=False).stdout
        for lib in re.findall(r"(/\S+)", out):
            dest = root / lib.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib, dest)
    return root


def recipe(tmp_path: Path, **fields: object) -> MmdebstrapRecipe:
    r = parse_recipe(
        {"distro": "debian", "release": "12", **fields}, source="r.toml", root=tmp_path
    )
    assert isinstance(r, MmdebstrapRecipe)
    return r


def test_files_and_post_script(tmp_path: Path) -> None:
    root = tiny_root(tmp_path / "image")
    (tmp_path / "motd").write_text("welcome\n")
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "a.conf").write_text("a\n")
    r = recipe(
        tmp_path,
        files=[
            {"src": "motd", "dest": "/etc/motd", "mode": "0600"},
            {"src": "conf.d", "dest": "/etc/thing/conf.d"},
        ],
        post='cat /etc/motd > /etc/copied\necho "$NETROOT_LABEL" > /etc/label\n',
    )
    said: list[str] = []
    customize.customize(
        root,
        r,
        log_file=tmp_path / "log",
        source="r.toml",
        say=said.append,
        env={"NETROOT_LABEL": "demo"},
    )
    assert (root / "etc/motd").stat().st_mode & 0o777 == 0o600
    assert (root / "etc/thing/conf.d/a.conf").read_text() == "a\n"
    assert (root / "etc/copied").read_text() == "welcome\n"
    assert (root / "etc/label").read_text() == "demo\n"
    assert not list((root / "tmp").iterdir())  # the script is removed afterwards
    assert said == ["copying 2 file entries into the image", "running the post script"]


def test_failing_post_script_names_recipe_and_field(tmp_path: Path) -> None:
    root = tiny_root(tmp_path / "image")
    r = recipe(tmp_path, post="true\nfalse\ntouch /etc/not-reached\n")
    with pytest.raises(RecipeError) as info:
        customize.customize(root, r, log_file=tmp_path / "log", source="r.toml", say=lambda _: None)
    assert str(info.value).startswith("r.toml: post: the post script failed with status 1")
    assert not (root / "etc/not-reached").exists()  # sh -e stops at the first failure


def test_missing_file_and_zone_name_the_field(tmp_path: Path) -> None:
    root = tiny_root(tmp_path / "image")
    with pytest.raises(RecipeError) as info:
        customize.customize(
            root,
            recipe(tmp_path, files=[{"src": "nope", "dest": "/etc/x"}]),
            log_file=tmp_path / "log",
            source="r.toml",
            say=lambda _: None,
        )
    assert info.value.field == "files"
    with pytest.raises(RecipeError) as info:
        customize.customize(
            root,
            recipe(tmp_path, timezone="Europe/Rome"),
            log_file=tmp_path / "log",
            source="r.toml",
            say=lambda _: None,
        )
    assert info.value.field == "timezone"


def test_post_script_never_writes_through_a_shared_inode(tmp_path: Path) -> None:
    tree = tiny_root(tmp_path / "built")
    (tree / "etc" / "shared.conf").write_text("original\n")
    (tree / "etc" / "gone").write_text("x")
    (tree / "var" / "lib" / "thing").mkdir(parents=True)
    (tree / "var" / "lib" / "thing" / "old").write_text("old")
    cache = pkgstage.StageCache(tmp_path / "cache")
    assert cache.lookup("k" * 64) is None
    stage = cache.store("k" * 64, tree, {"packages": 3}, tmp_path / "log", "b1")
    assert cache.lookup("k" * 64) == stage and stage.info()["packages"] == 3
    out = tmp_path / "out"
    out.mkdir()
    cache.copy_out(stage, out, tmp_path / "log")
    cached, cloned = stage.rootfs / "etc/shared.conf", out / "etc/shared.conf"
    assert cached.stat().st_ino == cloned.stat().st_ino  # a clone: hard links here
    script = (
        "echo appended >> /etc/shared.conf\n"  # in place, through the shared inode
        "echo gone > /dev/null; : > /etc/new\n"
    )
    r = recipe(tmp_path, post=script + "cat /etc/gone > /etc/was-there\n")
    customize.customize(out, r, log_file=tmp_path / "log", source="r.toml", say=lambda _: None)
    assert cloned.read_text() == "original\nappended\n"
    assert cached.read_text() == "original\n"  # the cache (and older versions) untouched
    assert cloned.stat().st_ino != cached.stat().st_ino
    assert (out / "etc/new").is_file() and (out / "etc/was-there").read_text() == "x"
    assert not list(out.parent.glob(".cow-*"))  # scratch layers removed
    assert not list(cache.top.glob(".tmp-*"))
