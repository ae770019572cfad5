"""Legacy `.def` recipes built by netroot's own backends (no singularity needed).

The .def's native recipe goes to its backend (mmdebstrap or dnf) without its
files and post script, so the package stage is built and cached as for any
recipe. Then, in Singularity's order: `%setup` on the host, `%files`,
`%environment`, `%post` inside the image. `%setup` runs in the .def's own
directory, as the original tool ran it (`rsync -a base/ ${SINGULARITY_ROOTFS}`
finds the recipe's base/), and sees the image at
$SINGULARITY_ROOTFS (and $APPTAINER_ROOTFS) through an overlay mounted over
it in a private mount namespace, so whatever it writes reaches the tree by
rename only (controller.build.builders.cow), never through an inode the tree shares
with the package-stage cache or older versions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import sys
import tempfile
import uuid
from pathlib import Path

from controller.build.builders import BuildRequest, Progress, builder_for, chroot, cow, customize
from controller.core import proc, shipped
from controller.core.errors import NetrootError, ProcessError, RecipeError
from controller.recipes import DefRecipe, DnfRecipe, Recipe, distros
from controller.recipes.inputs import setup_sources
from controller.store import fsops
from controller.store.safepath import ImageRoot

BACKEND_VERSION = "1"
ENVIRONMENT_FILE = "etc/profile.d/netroot-environment.sh"
ROOTFS_VARIABLES = ("SINGULARITY_ROOTFS", "APPTAINER_ROOTFS")


def setup_argv(root: Path, scratch: chroot.Scratch, script: Path) -> list[str]:
    """%setup on the host, with an overlay over root in a private mount namespace (pure)."""
    options = cow.overlay_options(root, scratch.upper, scratch.work)
    plan = {
        "mounts": [["mount", "-t", "overlay", "-o", options, "overlay", os.fspath(root)]],
        "exec": ["/bin/sh", "-e", os.fspath(script)],
    }
    return chroot.unshare_argv([sys.executable, "-I", os.fspath(chroot.NSEXEC), json.dumps(plan)])


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
            proc.run(
                setup_argv(root, scratch, script),
                env=setup_env(root, env),
                cwd=recipe.definition.resolve().parent,
                log_file=log_file,
            )
        except ProcessError as exc:
            raise RecipeError(
                recipe.where("setup"),
                "%setup",
                f"failed with status {exc.returncode} (see the build log)",
            ) from None
        return cow.merge_upper(scratch.upper, root)
    finally:
        fsops.remove_tree(scratch.path)


def _walk(top: Path) -> list[Path]:
    """top and, for a directory, everything under it, in a stable order."""
    if not top.is_dir() or top.is_symlink():
        return [top]
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        out.append(Path(dirpath))
        links = [d for d in dirnames if (Path(dirpath) / d).is_symlink()]  # not walked into
        out.extend(Path(dirpath) / name for name in sorted(filenames + links))
    return out


def tree_digest(paths: list[Path], home: Path) -> str:
    """sha256 over the names (relative to home), kinds, modes and contents of files and trees."""
    h = hashlib.sha256()
    for path in (p for top in paths for p in _walk(top)):
        st = path.lstat()
        h.update(f"{path.relative_to(home)}\0{st.st_mode:o}\0".encode())
        if stat.S_ISREG(st.st_mode):
            h.update(hashlib.sha256(path.read_bytes()).digest())
        elif stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(path).encode())
    return h.hexdigest()


def rpmdb_probe_argv(dbpath: Path, backend: str) -> list[str]:
    """rpmdb creating an empty database of a format in a scratch directory (pure)."""
    define = f"_db_backend {backend}"
    return ["rpmdb", "--initdb", "--dbpath", os.fspath(dbpath), "--define", define]


def host_rpm_writes(backend: str) -> bool:
    """Whether the build host's rpm writes that database format.

    Debian's rpm 4.18 has no bdb backend: it falls back to a dummy database and
    dnf then installs nothing, after downloading everything. Asked once, up front.
    """
    with tempfile.TemporaryDirectory(prefix="netroot-rpmdb-") as scratch:
        done = proc.run(rpmdb_probe_argv(Path(scratch), backend), check=False)
    said = done.stdout + done.stderr
    return done.returncode == 0 and "dummy database" not in said and "invalid" not in said


def check_rpmdb_format(recipe: DefRecipe) -> None:
    """A release whose rpm uses bdb (EL 7/8, Fedora 32 and older) needs a host rpm writing it."""
    native = recipe.native
    if not isinstance(native, DnfRecipe):
        return
    backend = distros.rpmdb_backend(native.info, native.suite)
    if backend != "sqlite" and not host_rpm_writes(backend):
        raise RecipeError(
            str(recipe.definition),
            "OSVersion",
            f"{native.distro} {native.release} keeps its rpm database in "
            f"{backend}, which this build host's rpm cannot write",
            "a build host whose rpm writes it (EL 7 or 8, Fedora 32 or older), "
            'or a tree built there, adopted with builder = "import"',
        )


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
        self.base_dir = base_dir if base_dir is not None else shipped.shipped("base")

    def input_key(self, recipe: Recipe, recipe_path: Path) -> str:
        """The backend's key for the native recipe, plus %setup, what it copies, %environment."""
        own = _own(recipe)
        inner = builder_for(own.native, base_dir=self.base_dir)
        payload = [
            self.name,
            BACKEND_VERSION,
            inner.input_key(own.native, own.definition),
            own.setup,
            tree_digest(setup_sources(own), own.definition.resolve().parent),
            own.environment,
        ]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()

    def build(self, request: BuildRequest, progress: Progress) -> None:
        """Packages (cached stage), then %setup, %files, %environment and %post."""
        recipe = _own(request.recipe)
        native, root, log = recipe.native, request.rootfs, request.log_file
        for kind, text in [
            *(("warning", w) for w in recipe.warnings),
            *(("notice", n) for n in recipe.notices),
        ]:
            progress(f"{kind}: {text}")
            with log.open("a") as f:
                f.write(f"netroot: {kind}: {text}\n")
        progress(
            f"legacy recipe {recipe.definition.name}: Bootstrap {recipe.bootstrap} -> "
            f"{native.builder} ({native.distro} {native.release})"
        )
        check_rpmdb_format(recipe)
        packages_only = native.model_copy(update={"files": (), "post": ""})
        inner = builder_for(packages_only, base_dir=self.base_dir)
        inner.build(
            dataclasses.replace(request, recipe=packages_only, recipe_path=recipe.definition),
            progress,
        )
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
