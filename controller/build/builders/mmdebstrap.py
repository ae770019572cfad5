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

from controller.build.builders import BuildRequest, Progress, chroot
from controller.build.builders.package_backend import PackageBackend
from controller.core.errors import NetrootError, RecipeError
from controller.core.flock import file_lock
from controller.recipes import MmdebstrapRecipe, PackageRecipe

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


class MmdebstrapBuilder(PackageBackend[MmdebstrapRecipe]):
    """Debian and Ubuntu trees from packages, with a cached package stage."""

    name = "mmdebstrap"
    backend_version = BACKEND_VERSION
    recipe_type = MmdebstrapRecipe

    def installed_count(self, root: Path, recipe: MmdebstrapRecipe) -> int:
        """Packages dpkg reports installed in the image."""
        return installed_count(root)

    def explain_failure(
        self, log_tail: str, recipe: MmdebstrapRecipe, source: str
    ) -> NetrootError | None:
        """The recipe field mmdebstrap's and apt's output blames."""
        return explain_failure(log_tail, recipe, source)

    def install(
        self, request: BuildRequest, recipe: MmdebstrapRecipe, base_tar: Path, progress: Progress
    ) -> None:
        """mmdebstrap in a private namespace, base/ extracted by its setup hook."""
        debs = deb_cache_dir(request.cache_dir, recipe)
        debs.mkdir(parents=True, exist_ok=True)
        suite = f"{recipe.distro} {recipe.suite} {recipe.arch}"
        progress(
            f"installing {len(recipe.package_set)} requested packages and their "
            f"dependencies ({suite}, mmdebstrap)"
        )
        with file_lock(debs.with_name(debs.name + ".lock"), mode=0o644):
            before = {p.name for p in debs.glob("*.deb")}
            argv = chroot.unshare_argv(mmdebstrap_argv(recipe, request.rootfs))
            env = mmdebstrap_env(debs, base_tar)
            self.run_installer(request, recipe, argv, env, _Reporter(progress))
            fetched = len({p.name for p in debs.glob("*.deb")} - before)
        count = installed_count(request.rootfs)
        progress(
            f"{count} packages installed: {fetched} downloaded, "
            f"{max(count - fetched, 0)} from the package cache"
        )
