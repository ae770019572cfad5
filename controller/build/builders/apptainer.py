"""A `.def` recipe built by apptainer or singularity itself, when a label asks for it.

A label chooses this with a TOML recipe:

    builder = "apptainer"        # or "singularity"
    definition = "rocky9-base.def"

The tool builds a sandbox directory straight into the staging rootfs, running
every section of the .def as it always did. netroot then adds what a diskless
node needs and the tool knows nothing about: base/ (dracut configuration, the
rootovl module, the boot interface unit), /boot/vmlinuz-KVER for rpm kernels,
and the initramfs generated inside the image for its own kernel. There is no
package-stage cache on this path (the tool keeps its own cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from controller.build.builders import BuildRequest, Progress, basetree, pkgstage
from controller.build.builders.initramfs import make_initramfs
from controller.build.builders.legacy import tree_digest
from controller.build.builders.package_backend import place_kernels
from controller.core import proc, shipped
from controller.core.errors import NetrootError
from controller.recipes import DefRecipe, Recipe
from controller.recipes.inputs import setup_sources

BACKEND_VERSION = "1"
TOOLS = ("apptainer", "singularity")


def tool_argv(tool: str, rootfs: Path, definition: Path) -> list[str]:
    """`apptainer build` of a sandbox directory (pure; golden-tested)."""
    if tool not in TOOLS:
        raise ValueError(f"unknown container tool {tool!r}; allowed: {', '.join(TOOLS)}")
    return [tool, "build", "--force", "--sandbox", os.fspath(rootfs), os.fspath(definition)]


def tool_env(tool: str, cache_dir: Path) -> dict[str, str]:
    """The tool's cache and temporary directories under netroot's cache."""
    prefix = tool.upper()
    top = cache_dir / tool
    return {
        f"{prefix}_CACHEDIR": os.fspath(top / "cache"),
        f"{prefix}_TMPDIR": os.fspath(top / "tmp"),
    }


def find_tool(tool: str) -> str | None:
    """The tool's path on netroot's search path, if installed."""
    return shutil.which(tool, path=proc.SEARCH_PATH)


class ApptainerBuilder:
    """Runs `apptainer build --sandbox` (or singularity's) on a legacy .def recipe."""

    def __init__(self, tool: str, base_dir: Path | None = None) -> None:
        self.name = tool
        self.base_dir = base_dir if base_dir is not None else shipped.shipped("base")

    def input_key(self, recipe: Recipe, recipe_path: Path) -> str:
        """The .def's content, the files %files and %setup copy in, base/ and the tool's name."""
        own = _own(recipe)
        content = pkgstage.recipe_digest(own.native, str(own.definition))
        text = own.definition.read_bytes()
        base = basetree.digest(basetree.scan(self.base_dir))
        setup = tree_digest(setup_sources(own), own.definition.resolve().parent)
        payload = [
            self.name,
            BACKEND_VERSION,
            hashlib.sha256(text).hexdigest(),
            content,
            base,
            setup,
        ]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()

    def build(self, request: BuildRequest, progress: Progress) -> None:
        """The tool's sandbox build, then base/, kernels in /boot and the initramfs."""
        recipe = _own(request.recipe)
        if find_tool(self.name) is None:
            raise NetrootError(
                f"{request.recipe_path}: builder {self.name!r}, but {self.name} is not installed "
                f"on this host (netroot builds the .def itself: point the label's recipe at "
                f"{recipe.definition.name})"
            )
        env = tool_env(self.name, request.cache_dir)
        for path in env.values():
            Path(path).mkdir(parents=True, exist_ok=True)
        progress(f"{self.name} build --sandbox {recipe.definition.name}")
        proc.run(
            tool_argv(self.name, request.rootfs, recipe.definition.resolve()),
            env=env,
            cwd=recipe.definition.resolve().parent,
            log_file=request.log_file,
        )
        _, base_tar = basetree.materialise(request.base_dir, request.cache_dir)
        proc.run(basetree.extract_argv(base_tar, request.rootfs), log_file=request.log_file)
        place_kernels(request.rootfs)
        make_initramfs(request.rootfs, recipe.native.info, request.log_file, progress)


def _own(recipe: Recipe) -> DefRecipe:
    if not isinstance(recipe, DefRecipe):
        raise NetrootError(f"the container-tool builder cannot build a {recipe.builder!r} recipe")
    return recipe
