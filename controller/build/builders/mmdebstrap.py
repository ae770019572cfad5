"""The mmdebstrap backend: Debian and Ubuntu images.

Package-manager mechanics only; what to install comes from `controller.recipes.distros`.
mmdebstrap runs in a private mount namespace (its mounts never reach the host),
with base/ extracted by a setup hook before any package is unpacked (so the
dracut configuration is in place when dracut configures, docs/design.md §8) and the
package archives bind-mounted from `<cache>/debs/` so a rebuild downloads
nothing twice. The kernel's own initramfs run is skipped (INITRD=No): dracut
runs once afterwards, inside the image, for the image's kernel.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from controller.build.builders import BuildRequest, Progress, basetree, chroot, customize, pkgstage
from controller.build.builders.follow import following
from controller.build.builders.initramfs import make_initramfs
from controller.core import proc, shipped
from controller.core.errors import NetrootError, ProcessError, RecipeError
from controller.recipes import MmdebstrapRecipe, PackageRecipe, Recipe

BACKEND_VERSION = "1"  # bump when a change here changes the trees built
MERGED_USR_HOOKS = Path("/usr/share/mmdebstrap/hooks/maybe-merged-usr")
APT_ARCHIVES = "/var/cache/apt/archives"
# Hook commands are constant strings: paths reach them through the environment,
# so no configured path is ever pasted into shell code.
SETUP_CACHE_HOOK = (
    f'mkdir -p "$1{APT_ARCHIVES}" && mount --bind "$NETROOT_DEB_CACHE" "$1{APT_ARCHIVES}"'
)
SETUP_BASE_HOOK = (
    'tar --extract --file "$NETROOT_BASE_TAR" --directory "$1" '
    "--numeric-owner --same-owner --preserve-permissions --no-overwrite-dir"
)
CUSTOMIZE_CACHE_HOOK = f'umount "$1{APT_ARCHIVES}"'


def mmdebstrap_argv(recipe: PackageRecipe, target: Path) -> list[str]:
    """The mmdebstrap command line for a recipe (pure; golden-tested)."""
    argv = [
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        "--verbose",
        f"--architectures={recipe.arch}",
        f"--components={','.join(recipe.components)}",
        f"--include={','.join(recipe.package_set)}",
        f"--hook-dir={MERGED_USR_HOOKS}",
        "--skip=download/empty",
        "--skip=essential/unlink",
        f"--setup-hook={SETUP_CACHE_HOOK}",
        f"--setup-hook={SETUP_BASE_HOOK}",
        f"--customize-hook={CUSTOMIZE_CACHE_HOOK}",
        recipe.suite,
        os.fspath(target),
    ]
    if recipe.mirror:
        argv.append(recipe.mirror)
    return argv


def mmdebstrap_env(deb_cache: Path, base_tar: Path) -> dict[str, str]:
    """Environment for the run: hook inputs, and no initramfs from the kernel's postinst."""
    return {
        "NETROOT_DEB_CACHE": os.fspath(deb_cache),
        "NETROOT_BASE_TAR": os.fspath(base_tar),
        "INITRD": "No",
    }


def deb_cache_dir(cache_dir: Path, recipe: PackageRecipe) -> Path:
    """Where the .deb files of one distribution release and architecture are kept."""
    return cache_dir / "debs" / f"{recipe.distro}-{recipe.suite}-{recipe.arch}"


_UNKNOWN_PACKAGE = re.compile(
    r"E: (?:Unable to locate package (\S+)|Package '([^']+)' has no installation candidate"
    r"|Couldn't find any package by (?:glob|regex) '([^']+)')"
)
_UNREACHABLE = re.compile(
    r"(Temporary failure resolving|Could not resolve|Failed to fetch|Unable to connect"
    r"|Could not connect|Connection failed|No route to host|does not have a Release file"
    r"|Connection timed out)"
)


def explain_failure(log_tail: str, recipe: PackageRecipe, source: str) -> NetrootError | None:
    """A recipe error naming the field at fault, when the log shows which one."""
    for line in log_tail.splitlines():
        if m := _UNKNOWN_PACKAGE.search(line):
            name = next(g for g in m.groups() if g)
            return RecipeError(
                source,
                "packages",
                f"unknown package {name!r} in "
                f"{recipe.distro} {recipe.suite} ({','.join(recipe.components)})",
            )
    for line in log_tail.splitlines():
        if _UNREACHABLE.search(line):
            mirror = recipe.mirror or "mmdebstrap's default mirror"
            return RecipeError(source, "mirror", f"cannot fetch from {mirror}: {line.strip()}")
    return None


_STAGES = (
    "downloading packages",
    "extracting archives",
    "installing essential packages",
    "installing remaining packages",
    "cleaning package lists",
    "success in",
)
_INDEX_FILES = re.compile(
    r" (InRelease|Release|Release\.gpg|Packages|Translation-\S+|Sources)"
    r"( \[|$)"
)


class _Reporter:
    """Turns mmdebstrap's verbose output into progress lines with package counts."""

    def __init__(self, say: Progress) -> None:
        self.say = say
        self.fetched = self.unpacked = self.set_up = 0

    def __call__(self, line: str) -> None:
        if line.startswith("Get:") and not _INDEX_FILES.search(line):
            self.fetched += 1
        elif line.startswith("Unpacking "):
            self.unpacked += 1
        elif line.startswith("Setting up "):
            self.set_up += 1
            if self.set_up % 25 == 0:
                self.say(f"{self.set_up} packages set up")
        elif line.startswith("I: ") and line[3:].startswith(_STAGES):
            self.say(
                f"{line[3:].rstrip('.')} ({self.fetched} downloaded, "
                f"{self.unpacked} unpacked, {self.set_up} set up)"
            )


def installed_count(root: Path) -> int:
    """Packages dpkg reports installed in the image."""
    status = root / "var/lib/dpkg/status"
    if not status.is_file():
        return 0
    return status.read_text(errors="replace").count("Status: install ok installed")


class MmdebstrapBuilder:
    """Debian and Ubuntu trees from packages, with a cached package stage."""

    name = "mmdebstrap"

    def __init__(self, base_dir: Path | None = None) -> None:
        self.base_dir = base_dir if base_dir is not None else shipped.shipped("base")

    def input_key(self, recipe: Recipe, recipe_path: Path) -> str:
        """Digest of the merged recipe, the files it copies in, base/ and this backend."""
        return pkgstage.input_key(
            self.name, BACKEND_VERSION, _own(recipe), recipe_path, self.base_dir
        )

    def build(self, request: BuildRequest, progress: Progress) -> None:
        """Package stage (cached), then the recipe's customisation, into request.rootfs."""
        recipe = _own(request.recipe)
        source = str(request.recipe_path)
        base_digest, base_tar = basetree.materialise(request.base_dir, request.cache_dir)
        key = pkgstage.stage_key(
            recipe, backend=self.name, backend_version=BACKEND_VERSION, base_digest=base_digest
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
            _note(request.log_file, message)
            cache.copy_out(stage, request.rootfs, request.log_file)
        else:
            self._install(request, recipe, base_tar, progress)
            kvers = make_initramfs(request.rootfs, recipe.info, request.log_file, progress)
            (request.rootfs / "etc/hostname").unlink(missing_ok=True)  # the build host's name
            count = installed_count(request.rootfs)
            progress(f"caching the package stage {key[:12]} ({count} packages)")
            cache.store(
                key,
                request.rootfs,
                {
                    "packages": count,
                    "kernel": " ".join(kvers),
                    "distro": recipe.distro,
                    "suite": recipe.suite,
                    "arch": recipe.arch,
                },
                request.log_file,
                request.build_id,
            )
        customize.customize(
            request.rootfs,
            recipe,
            log_file=request.log_file,
            source=source,
            say=progress,
            env={"NETROOT_LABEL": request.label, "NETROOT_BUILD_ID": request.build_id},
        )

    def _install(
        self, request: BuildRequest, recipe: MmdebstrapRecipe, base_tar: Path, progress: Progress
    ) -> None:
        debs = deb_cache_dir(request.cache_dir, recipe)
        debs.mkdir(parents=True, exist_ok=True)
        suite = f"{recipe.distro} {recipe.suite} {recipe.arch}"
        progress(
            f"installing {len(recipe.package_set)} requested packages and their "
            f"dependencies ({suite}, mmdebstrap)"
        )
        with pkgstage.locked(debs.with_name(debs.name + ".lock")):
            before = {p.name for p in debs.glob("*.deb")}
            argv = chroot.unshare_argv(mmdebstrap_argv(recipe, request.rootfs))
            try:
                with following(request.log_file, _Reporter(progress)):
                    proc.run(argv, env=mmdebstrap_env(debs, base_tar), log_file=request.log_file)
            except ProcessError:
                explained = explain_failure(
                    proc.file_tail(request.log_file, 200), recipe, str(request.recipe_path)
                )
                if explained is not None:
                    raise explained from None
                raise
            fetched = len({p.name for p in debs.glob("*.deb")} - before)
        count = installed_count(request.rootfs)
        progress(
            f"{count} packages installed: {fetched} downloaded, "
            f"{max(count - fetched, 0)} from the package cache"
        )


def _own(recipe: Recipe) -> MmdebstrapRecipe:
    if not isinstance(recipe, MmdebstrapRecipe):
        raise NetrootError(f"the mmdebstrap builder cannot build a {recipe.builder!r} recipe")
    return recipe


def _note(log_file: Path, message: str) -> None:
    with log_file.open("a") as f:
        f.write(f"netroot: {message}\n")
