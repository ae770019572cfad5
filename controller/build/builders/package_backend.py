"""What every package-manager backend does the same way: the cached package stage.

A backend (dnf, mmdebstrap) fills in how packages get installed, how many an
image holds and which recipe field a failed run's log points at; this base
runs the flow around it: the package-stage key, reuse of a cached stage or
installation then the initramfs and storing the stage, and the recipe's
customisation either way. Also the kernel placement any rpm-based tree
needs (dnf, and apptainer's sandboxes).
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from controller.build.builders import BuildRequest, Progress, basetree, customize, pkgstage
from controller.build.builders.follow import following
from controller.build.builders.initramfs import make_initramfs
from controller.core import proc, shipped
from controller.core.errors import NetrootError, ProcessError
from controller.recipes import PackageRecipe, Recipe

R = TypeVar("R", bound=PackageRecipe)
KERNEL_DIRS = ("usr/lib/modules", "lib/modules")
LOG_TAIL_LINES = 200  # how much of the log a failure explanation reads


class PackageBackend(ABC, Generic[R]):
    """A tree from a distribution's packages, with a cached package stage.

    Subclasses set name, backend_version and recipe_type, and fill in install,
    installed_count and explain_failure.
    """

    name: str
    backend_version: str  # bump when a change in the backend changes the trees built
    recipe_type: type[R]

    def __init__(self, base_dir: Path | None = None) -> None:
        self.base_dir = base_dir if base_dir is not None else shipped.shipped("base")

    @abstractmethod
    def install(self, request: BuildRequest, recipe: R, base_tar: Path, progress: Progress) -> None:
        """Install the recipe's packages, base/ (from base_tar) first, into request.rootfs."""

    @abstractmethod
    def installed_count(self, root: Path, recipe: R) -> int:
        """How many packages the image's package database lists."""

    @abstractmethod
    def explain_failure(self, log_tail: str, recipe: R, source: str) -> NetrootError | None:
        """A recipe error naming the field at fault, when the log shows which one."""

    def stage_version(self, recipe: R, source: str) -> str:
        """The backend's part of the package-stage key (also a chance to reject the recipe
        before anything is built)."""
        return self.backend_version

    def after_install(self, root: Path, progress: Progress) -> None:
        """What the freshly installed tree needs before its initramfs is made."""

    def own(self, recipe: Recipe) -> R:
        """The recipe, if it is this backend's kind."""
        if not isinstance(recipe, self.recipe_type):
            raise NetrootError(f"the {self.name} builder cannot build a {recipe.builder!r} recipe")
        return recipe

    def input_key(self, recipe: Recipe, recipe_path: Path) -> str:
        """Digest of the merged recipe, the files it copies in, base/ and this backend."""
        return pkgstage.input_key(
            self.name, self.backend_version, self.own(recipe), recipe_path, self.base_dir
        )

    def build(self, request: BuildRequest, progress: Progress) -> None:
        """Package stage (cached), then the recipe's customisation, into request.rootfs."""
        recipe = self.own(request.recipe)
        source = str(request.recipe_path)
        version = self.stage_version(recipe, source)
        base_digest, base_tar = basetree.materialise(request.base_dir, request.cache_dir)
        key = pkgstage.stage_key(
            recipe, backend=self.name, backend_version=version, base_digest=base_digest
        )
        cache = pkgstage.StageCache(request.cache_dir)
        stage = None if request.rebuild else cache.lookup(key)
        if stage is not None:
            info = stage.info()
            message = (
                f"reusing package stage {key[:12]} ({info.get('packages')} packages, "
                f"kernel {info.get('kernel')}): no package downloaded or installed"
            )
            progress(message)
            with request.log_file.open("a") as f:
                f.write(f"netroot: {message}\n")
            cache.copy_out(stage, request.rootfs, request.log_file)
        else:
            self.install(request, recipe, base_tar, progress)
            self.after_install(request.rootfs, progress)
            kvers = make_initramfs(request.rootfs, recipe.info, request.log_file, progress)
            (request.rootfs / "etc/hostname").unlink(missing_ok=True)  # the build host's name
            count = self.installed_count(request.rootfs, recipe)
            progress(f"caching the package stage {key[:12]} ({count} packages)")
            info = {
                "packages": count,
                "kernel": " ".join(kvers),
                "distro": recipe.distro,
                "suite": recipe.suite,
                "arch": recipe.arch,
            }
            cache.store(key, request.rootfs, info, request.log_file, request.build_id)
        customize.customize(
            request.rootfs,
            recipe,
            log_file=request.log_file,
            source=source,
            say=progress,
            env={"NETROOT_LABEL": request.label, "NETROOT_BUILD_ID": request.build_id},
        )

    def run_installer(
        self,
        request: BuildRequest,
        recipe: R,
        argv: list[str],
        env: dict[str, str],
        reporter: Callable[[str], None],
    ) -> None:
        """Run the package manager, its log lines fed to reporter; a failure the log
        explains becomes that recipe error."""
        try:
            with following(request.log_file, reporter):
                proc.run(argv, env=env, log_file=request.log_file)
        except ProcessError:
            tail = proc.file_tail(request.log_file, LOG_TAIL_LINES)
            explained = self.explain_failure(tail, recipe, str(request.recipe_path))
            if explained is not None:
                raise explained from None
            raise


def place_kernels(root: Path) -> list[str]:
    """/boot/vmlinuz-KVER for every rpm kernel that ships only /usr/lib/modules/KVER/vmlinuz.

    Fedora's and EL 9's kernel packages leave the copy in /boot to
    kernel-install, whose plugins depend on the boot loader layout; a netboot
    image has none, so netroot puts it where every distribution's tools look.
    """
    placed = []
    for top in KERNEL_DIRS:
        modules = root / top
        if modules.is_symlink() or not modules.is_dir():
            continue
        for kver in sorted(os.listdir(modules)):
            image = modules / kver / "vmlinuz"
            target = root / "boot" / f"vmlinuz-{kver}"
            if image.is_file() and not image.is_symlink() and not target.exists():
                target.parent.mkdir(mode=0o755, exist_ok=True)
                shutil.copy2(image, target)
                placed.append(kver)
        break  # lib/modules is the same directory on a merged-/usr image
    return placed
