"""Legacy `.def` recipes built by netroot's own backends (no singularity needed).

The .def's native recipe goes to its backend (mmdebstrap or dnf) without its
files and post script, so the package stage is built and cached as for any
recipe. Then, in Singularity's order: `%setup` on the host, `%files`,
`%environment`, `%post` inside the image. `%setup` sees the image at
$SINGULARITY_ROOTFS (and $APPTAINER_ROOTFS) through an overlay mounted over
it in a private mount namespace, so whatever it writes reaches the tree by
rename only (controller.builders.cow), never through an inode the tree shares
with the package-stage cache or older versions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import uuid
from pathlib import Path

from controller import fsops, proc
from controller.builders import BuildRequest, Progress, builder_for, chroot, cow, customize
from controller.config import CHECKOUT
from controller.errors import NetrootError, ProcessError, RecipeError
from controller.recipes import DefRecipe, Recipe
from controller.safepath import ImageRoot

BACKEND_VERSION = "1"
ENVIRONMENT_FILE = "etc/profile.d/netroot-environment.sh"
ROOTFS_VARIABLES = ("SINGULARITY_ROOTFS", "APPTAINER_ROOTFS")


def setup_argv(root: Path, scratch: chroot.Scratch, script: Path) -> list[str]:
    """%setup on the host, with an overlay over root in a private mount namespace (pure)."""
    options = cow.overlay_options(root, scratch.upper, scratch.work)
    plan = {"mounts": [["mount", "-t", "overlay", "-o", options, "overlay", os.fspath(root)]],
            "exec": ["/bin/sh", "-e", os.fspath(script)]}
    return chroot.unshare_argv([sys.executable, "-I", os.fspath(chroot.NSEXEC),
                                json.dumps(plan)])


def setup_env(root: Path, extra: dict[str, str]) -> dict[str, str]:
    """Where %setup finds the image: Singularity's and Apptainer's variable names."""
    return {**dict.fromkeys(ROOTFS_VARIABLES, os.fspath(root)), **extra}


def run_setup(root: Path, recipe: DefRecipe, log_file: Path, env: dict[str, str]) -> int:
    """Run %setup on the host in the .def's directory; returns the entries it changed."""
    scratch = chroot.Scratch(root.parent / f".setup-{uuid.uuid4().hex[:12]}")
    try:
        for d in (scratch.upper, scratch.work):
            d.mkdir(parents=True)
        script = scratch.path / "setup.sh"
        script.write_text(recipe.setup)
        try:
            proc.run(setup_argv(root, scratch, script), env=setup_env(root, env),
                     cwd=recipe.definition.resolve().parent, log_file=log_file)
        except ProcessError as exc:
            raise RecipeError(recipe.where("setup"), "%setup", f"failed with status "
                              f"{exc.returncode} (see the build log)") from None
        return cow.merge_upper(scratch.upper, root)
    finally:
        fsops.remove_tree(scratch.path)


def write_environment(root: Path, recipe: DefRecipe) -> None:
    """%environment as a profile.d script: what login shells on the node source."""
    text = f"# %environment of {recipe.definition.name} (netroot)\n{recipe.environment}"
    with ImageRoot(root) as image:
        image.ensure_dir("etc/profile.d", mode=0o755, uid=0, gid=0)
        image.write_bytes(ENVIRONMENT_FILE, text.encode(), mode=0o644)


class DefBuilder:
    """A .def recipe through the backend its Bootstrap maps to, then its sections."""

    name = "def"

    def __init__(self, base_dir: Path | None = None) -> None:
        self.base_dir = base_dir if base_dir is not None else CHECKOUT / "base"

    def input_key(self, recipe: Recipe, recipe_path: Path) -> str:
        """The backend's key for the native recipe, plus %setup and %environment."""
        own = _own(recipe)
        inner = builder_for(own.native, base_dir=self.base_dir)
        payload = [self.name, BACKEND_VERSION, inner.input_key(own.native, own.definition),
                   own.setup, own.environment]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()

    def build(self, request: BuildRequest, progress: Progress) -> None:
        """Packages (cached stage), then %setup, %files, %environment and %post."""
        recipe = _own(request.recipe)
        native, root, log = recipe.native, request.rootfs, request.log_file
        for notice in recipe.notices:
            progress(f"notice: {notice}")
            with log.open("a") as f:
                f.write(f"netroot: notice: {notice}\n")
        progress(f"legacy recipe {recipe.definition.name}: Bootstrap {recipe.bootstrap} -> "
                 f"{native.builder} ({native.distro} {native.release})")
        packages_only = native.model_copy(update={"files": (), "post": ""})
        inner = builder_for(packages_only, base_dir=self.base_dir)
        inner.build(dataclasses.replace(request, recipe=packages_only,
                                        recipe_path=recipe.definition), progress)
        env = {"NETROOT_LABEL": request.label, "NETROOT_BUILD_ID": request.build_id}
        if recipe.setup.strip():
            progress("%setup (on the host)")
            changed = run_setup(root, recipe, log, env)
            progress(f"%setup changed {changed} entries of the image")
        if native.files:
            progress(f"%files: {len(native.files)} entries")
            customize.copy_files(root, native, recipe.where("files"))
        if recipe.environment.strip():
            progress(f"%environment -> /{ENVIRONMENT_FILE}")
            write_environment(root, recipe)
        if native.post.strip():
            progress("%post (inside the image)")
            try:
                customize.run_post(root, native, log, str(recipe.definition), env)
            except RecipeError as exc:
                raise RecipeError(recipe.where("post"), "%post", exc.problem) from None


def _own(recipe: Recipe) -> DefRecipe:
    if not isinstance(recipe, DefRecipe):
        raise NetrootError(f"the def builder cannot build a {recipe.builder!r} recipe")
    return recipe
