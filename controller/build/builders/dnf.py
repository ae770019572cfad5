"""The dnf backend: Fedora, Rocky, Alma and CentOS Stream images with `dnf --installroot`.

Package-manager mechanics only; what to install, where a mirror keeps each
repository, the signing key and the rpm database's place come from
`controller.recipes.distros`. dnf runs on the host against the image in a private
mount namespace, where the image's /proc, /sys, /dev and /run are mounted (rpm
scriptlets chroot into it) and `<cache>/rpms/<distro>-<release>-<arch>` is
bound over the image's /var/cache/dnf (keepcache: a rebuild downloads nothing
twice). Its configuration (dnf.conf, one .repo file, and an .rpmmacros
putting the database where the image's rpm expects it) lives in a private
directory given as HOME and --config, so no host configuration leaks in,
except the host's repositories when a recipe names neither mirror nor
repositories (building Rocky on a Rocky host). base/ is extracted before any
package installs; dracut runs once afterwards, inside the image.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from controller.build.builders import BuildRequest, Progress, basetree, chroot
from controller.build.builders.package_backend import PackageBackend, place_kernels
from controller.core import proc
from controller.core.errors import NetrootError, RecipeError
from controller.core.flock import file_lock
from controller.recipes import DnfRecipe, distros

BACKEND_VERSION = "1"  # bump when a change here changes the trees built
RPM_CACHE = "/var/cache/dnf"
HOST_REPO_DIRS = ("/etc/yum.repos.d", "/etc/distro.repos.d")


@dataclass(frozen=True)
class Repo:
    """One repository as dnf gets it."""

    name: str
    baseurl: str
    gpgcheck: bool
    gpgkey: str | None


def repositories(recipe: DnfRecipe, source: str) -> list[Repo]:
    """The mirror's repositories (components) and the recipe's own, in that order."""
    repos: list[Repo] = []
    if recipe.mirror:
        keys = recipe.gpgkeys or tuple(
            k for k in (distros.gpg_key_url(recipe.info, recipe.suite, recipe.mirror),) if k
        )
        for name, url in distros.repo_urls(recipe.info, recipe.mirror, recipe.components).items():
            repos.append(Repo(name, url, recipe.gpgcheck, " ".join(keys) or None))
    for r in recipe.repositories:
        check = recipe.gpgcheck if r.gpgcheck is None else r.gpgcheck
        repos.append(Repo(r.name, r.baseurl, check, r.gpgkey))
    for repo in repos:
        if repo.gpgcheck and not repo.gpgkey:
            raise RecipeError(
                source,
                "repositories",
                f"repository {repo.name!r} is signature-checked but names no key",
                "a gpgkey URL (file:// allowed), or gpgcheck = false",
            )
    return repos


def repo_file(repos: list[Repo]) -> str:
    """The .repo file (INI) for the repositories."""
    parts = []
    for r in repos:
        lines = [
            f"[{r.name}]",
            f"name={r.name}",
            f"baseurl={r.baseurl}",
            f"gpgcheck={int(r.gpgcheck)}",
            "enabled=1",
        ]
        if r.gpgkey:
            lines.append(f"gpgkey={r.gpgkey}")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def dnf_conf(recipe: DnfRecipe) -> str:
    """dnf.conf: no weak dependencies, packages kept in the cache, no silent repo skipping."""
    return (
        "[main]\n"
        f"gpgcheck={int(recipe.gpgcheck)}\n"
        "install_weak_deps=False\n"
        "keepcache=True\n"
        "skip_if_unavailable=False\n"
        f"cachedir={RPM_CACHE}\n"
    )


def rpm_macros(recipe: DnfRecipe) -> str:
    """~/.rpmmacros for the run: the image's database location and format, not the host's."""
    return (
        f"%_dbpath {distros.rpmdb_path(recipe.info, recipe.suite)}\n"
        f"%_db_backend {distros.rpmdb_backend(recipe.info, recipe.suite)}\n"
    )


def dnf_argv(recipe: DnfRecipe, root: Path, conf_dir: Path, *, host_repos: bool) -> list[str]:
    """The dnf command line for a recipe (pure; golden-tested)."""
    reposdir = ",".join(HOST_REPO_DIRS) if host_repos else os.fspath(conf_dir / "repos.d")
    return [
        "dnf",
        f"--installroot={os.fspath(root)}",
        f"--releasever={recipe.suite}",
        f"--forcearch={recipe.arch}",
        f"--config={os.fspath(conf_dir / 'dnf.conf')}",
        f"--setopt=reposdir={reposdir}",
        "--noplugins",
        "--assumeyes",
        "install",
        *recipe.package_set,
    ]


def namespace_argv(root: Path, rpm_cache: Path, inner: list[str]) -> list[str]:
    """inner in a private mount+PID namespace with the image's API filesystems and cache."""
    mounts = [
        *chroot.mount_plan(root, resolv_conf=None),
        ["mount", "--bind", os.fspath(rpm_cache), f"{os.fspath(root)}{RPM_CACHE}"],
    ]
    plan = {"mounts": mounts, "exec": inner}
    return chroot.unshare_argv([sys.executable, "-I", os.fspath(chroot.NSEXEC), json.dumps(plan)])


def rpm_cache_dir(cache_dir: Path, recipe: DnfRecipe) -> Path:
    """Where the packages and metadata of one distribution release and architecture are kept."""
    return cache_dir / "rpms" / f"{recipe.distro}-{recipe.suite}-{recipe.arch}"


_UNKNOWN_PACKAGE = re.compile(r"(?:No match for argument|Unable to find a match): (\S+)")
_UNREACHABLE = re.compile(
    r"(Cannot download repomd\.xml|Failed to download metadata|Curl error|"
    r"Cannot find a valid baseurl|Could not resolve host|Couldn't connect)"
)
_NO_REPOS = re.compile(r"There are no enabled repositories")


def explain_failure(log_tail: str, recipe: DnfRecipe, source: str) -> NetrootError | None:
    """A recipe error naming the field at fault, when dnf's output shows which one."""
    lines = log_tail.splitlines()
    for line in lines:
        if m := _UNKNOWN_PACKAGE.search(line):
            return RecipeError(
                source,
                "packages",
                f"unknown package {m.group(1)!r} in "
                f"{recipe.distro} {recipe.suite} ({', '.join(_repo_names(recipe))})",
            )
    for line in lines:
        if _UNREACHABLE.search(line) or _NO_REPOS.search(line):
            field = "mirror" if recipe.mirror else "repositories"
            origin = recipe.mirror or "the repositories"
            return RecipeError(source, field, f"cannot fetch from {origin}: {line.strip()}")
    return None


def _repo_names(recipe: DnfRecipe) -> list[str]:
    names = list(recipe.components) if recipe.mirror else []
    return names + [r.name for r in recipe.repositories] or ["the host's repositories"]


class _Reporter:
    """Turns dnf's output into progress lines with package counts."""

    def __init__(self, say: Progress) -> None:
        self.say = say
        self.installed = 0

    def __call__(self, line: str) -> None:
        text = line.strip()
        if text.startswith("Installing ") and " : " in text:
            self.installed += 1
            if self.installed % 25 == 0:
                self.say(f"{self.installed} packages installed")
        elif text.startswith(
            (
                "Downloading Packages",
                "Running transaction check",
                "Running transaction",
                "Complete!",
            )
        ):
            self.say(f"dnf: {text.rstrip(':.!')} ({self.installed} installed)")


def installed_count(root: Path, recipe: DnfRecipe) -> int:
    """Packages the image's rpm database lists (0 when the host's rpm cannot read it)."""
    done = proc.run(
        ["rpm", "--root", root, "--dbpath", distros.rpmdb_path(recipe.info, recipe.suite), "-qa"],
        check=False,
    )
    return len(done.stdout.split()) if done.returncode == 0 else 0


class DnfBuilder(PackageBackend[DnfRecipe]):
    """Fedora, Rocky, Alma and CentOS Stream trees from packages, with a cached package stage."""

    name = "dnf"
    backend_version = BACKEND_VERSION
    recipe_type = DnfRecipe

    def stage_version(self, recipe: DnfRecipe, source: str) -> str:
        """pkgstage's key knows mirror and components; the repositories and signature
        checking decide the tree too, so they ride along in the backend version."""
        repos = repositories(recipe, source)
        extra = hashlib.sha256(json.dumps([repo_file(repos), recipe.gpgcheck]).encode())
        return f"{BACKEND_VERSION}+{extra.hexdigest()[:16]}"

    def after_install(self, root: Path, progress: Progress) -> None:
        """Kernel images into /boot, where dracut and the boot step look for them."""
        placed = place_kernels(root)
        if placed:
            progress(f"kernel image placed in /boot for {', '.join(placed)}")

    def installed_count(self, root: Path, recipe: DnfRecipe) -> int:
        """Packages the image's rpm database lists."""
        return installed_count(root, recipe)

    def explain_failure(self, log_tail: str, recipe: DnfRecipe, source: str) -> NetrootError | None:
        """The recipe field dnf's output blames."""
        return explain_failure(log_tail, recipe, source)

    def install(
        self, request: BuildRequest, recipe: DnfRecipe, base_tar: Path, progress: Progress
    ) -> None:
        """dnf --installroot in a private namespace, base/ extracted first."""
        source = str(request.recipe_path)
        repos = repositories(recipe, source)
        host_repos = not repos
        if host_repos and not any(Path(d).is_dir() and os.listdir(d) for d in HOST_REPO_DIRS):
            raise RecipeError(
                source,
                "mirror",
                "no mirror and no repositories, and this build "
                "host has no dnf repositories of its own (/etc/yum.repos.d)",
                f"mirror = the root URL of a {recipe.distro} mirror, or "
                "[[repositories]] with a baseurl",
            )
        root = request.rootfs
        proc.run(basetree.extract_argv(base_tar, root), log_file=request.log_file)
        for name in (*chroot.MOUNT_POINTS, RPM_CACHE.lstrip("/")):
            (root / name).mkdir(mode=0o755, parents=True, exist_ok=True)
        rpms = rpm_cache_dir(request.cache_dir, recipe)
        rpms.mkdir(parents=True, exist_ok=True)
        where = f"{recipe.distro} {recipe.suite} {recipe.arch}"
        names = ", ".join(r.name for r in repos) or "the host's repositories"
        progress(
            f"installing {len(recipe.package_set)} requested packages and their "
            f"dependencies ({where}, dnf, from {names})"
        )
        with (
            file_lock(rpms.with_name(rpms.name + ".lock"), mode=0o644),
            tempfile.TemporaryDirectory(prefix="netroot-dnf-") as tmp,
        ):
            conf = Path(tmp)
            (conf / "repos.d").mkdir()
            (conf / "dnf.conf").write_text(dnf_conf(recipe))
            (conf / "repos.d" / "netroot.repo").write_text(repo_file(repos))
            (conf / ".rpmmacros").write_text(rpm_macros(recipe))
            argv = namespace_argv(root, rpms, dnf_argv(recipe, root, conf, host_repos=host_repos))
            env = {"HOME": os.fspath(conf)}
            self.run_installer(request, recipe, argv, env, _Reporter(progress))
        progress(f"{installed_count(root, recipe)} packages installed")
