"""What netroot knows about each distribution, apart from package-manager mechanics.

Pure data and lookups (mkosi's `distribution/` split): release names and
suites, default architecture and components, and the packages a diskless node
needs to boot (kernel, dracut with NFS and network support). The backends in
`controller.build.builders` turn this into argv; nothing here runs anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

DistroName = Literal["debian", "ubuntu", "fedora", "rocky", "alma", "centos-stream", "centos"]
Family = Literal["deb", "rpm"]

# dpkg and rpm spell architectures differently.
_DEB_ARCHES = ("amd64", "arm64", "ppc64el", "s390x", "riscv64")
_RPM_ARCHES = ("x86_64", "aarch64", "ppc64le", "s390x")


@dataclass(frozen=True)
class Distro:
    """One distribution: how its releases are named and what a netboot node needs."""

    name: DistroName
    family: Family
    arches: tuple[str, ...]
    releases: dict[str, str]  # accepted release name -> suite / release the tools take
    default_components: tuple[str, ...]
    # the kernel package per architecture ("*" for every architecture)
    kernel_packages: dict[str, tuple[str, ...]]
    # dracut able to build an NFS + network initramfs, and what its modules call
    # (network-legacy runs pgrep, hence procps; the nfs module needs the NFS client)
    boot_packages: tuple[str, ...]
    release_pattern: str = ""  # releases matching it are accepted too (numbered releases)
    # rpm only: repository name -> its path under a mirror's root (dnf expands
    # $releasever and $basearch), and the signing key's file name ({major} expanded)
    repo_paths: dict[str, str] = field(default_factory=dict)
    gpg_key_name: str = ""
    gpg_key_on_mirror: bool = False  # the key sits at the mirror's root (else the host's)
    # releases past their end of life: still accepted, but only from a mirror the recipe
    # names (the distribution's own mirrors dropped them), with a notice (release -> why)
    eol_releases: dict[str, str] = field(default_factory=dict)
    eol_pattern: str = ""  # numbered end-of-life releases (older Fedora)

    @property
    def builder(self) -> str:
        """The backend that builds it: mmdebstrap for dpkg distributions, dnf for rpm ones."""
        return "mmdebstrap" if self.family == "deb" else "dnf"

    @property
    def default_arch(self) -> str:
        """The architecture built when a recipe names none."""
        return self.arches[0]

    def suite(self, release: str) -> str:
        """The suite (Debian, Ubuntu) or release version (rpm) that the tools take."""
        if release in self.releases:
            return self.releases[release]
        if self.release_pattern and re.fullmatch(self.release_pattern, release):
            return release
        if self.eol(release):
            return release
        raise ValueError(
            f"unknown {self.name} release {release!r}; allowed: {self.allowed_releases()}"
        )

    def allowed_releases(self) -> str:
        """Human list of the accepted release names."""
        names = ", ".join(self.releases)
        if self.release_pattern:
            names += f" or a release number ({self.release_pattern})"
        eol = ", ".join(self.eol_releases) or (self.eol_pattern and f"({self.eol_pattern})")
        if eol:
            names += f"; end-of-life {eol} from a mirror the recipe names"
        return names.removeprefix("; ")

    def eol(self, release: str) -> str | None:
        """Why release is past its end of life, or None for a maintained (or unknown) one."""
        if release in self.eol_releases:
            return self.eol_releases[release]
        if self.eol_pattern and re.fullmatch(self.eol_pattern, release):
            return f"{self.name.capitalize()} {release} is end-of-life"
        return None

    def kernel_for(self, arch: str) -> tuple[str, ...]:
        """Kernel package names for an architecture."""
        return self.kernel_packages.get(arch) or self.kernel_packages["*"]

    def required_packages(self, arch: str) -> tuple[str, ...]:
        """Packages every netroot image of this distribution gets, whatever the recipe says."""
        return (*self.kernel_for(arch), *self.boot_packages)


_DEBIAN_BOOT = (
    "dracut",
    "dracut-network",
    "nfs-common",
    "procps",
    "iproute2",
    "systemd-sysv",
    "zstd",
)
_RPM_BOOT = (
    "dracut",
    "dracut-network",
    "nfs-utils",
    "procps-ng",
    "iproute",
    "systemd",
    "zstd",
)

# Enterprise Linux rebuilds: BaseOS and AppStream hold everything a netboot node needs.
_EL_REPOS = ("BaseOS", "AppStream")


def _el_paths(suffix: str) -> dict[str, str]:
    """Repository paths under an EL mirror's root (`9/BaseOS/...`, `9-stream/BaseOS/...`)."""
    repos = ("BaseOS", "AppStream", "CRB", "extras", "HighAvailability", "PowerTools")
    return {r: f"$releasever{suffix}/{r}/$basearch/os/" for r in repos}


def _el_rebuild(name: DistroName, gpg_key_name: str) -> Distro:
    """Rocky and Alma: releases 8 to 10 (point releases too), keys at the mirror's root."""
    return Distro(
        name=name,
        family="rpm",
        arches=_RPM_ARCHES,
        releases={"8": "8", "9": "9", "10": "10"},
        release_pattern=r"(8|9|10)\.[0-9]+",
        default_components=_EL_REPOS,
        kernel_packages={"*": ("kernel",)},
        boot_packages=_RPM_BOOT,
        repo_paths=_el_paths(""),
        gpg_key_name=gpg_key_name,
        gpg_key_on_mirror=True,
    )


DISTROS: dict[str, Distro] = {
    "debian": Distro(
        name="debian",
        family="deb",
        arches=_DEB_ARCHES,
        releases={
            "11": "bullseye",
            "12": "bookworm",
            "13": "trixie",
            "14": "forky",
            "bullseye": "bullseye",
            "bookworm": "bookworm",
            "trixie": "trixie",
            "forky": "forky",
            "testing": "testing",
            "sid": "unstable",
            "unstable": "unstable",
        },
        default_components=("main",),
        kernel_packages={
            "*": ("linux-image-amd64",),
            "arm64": ("linux-image-arm64",),
            "ppc64el": ("linux-image-powerpc64le",),
            "s390x": ("linux-image-s390x",),
            "riscv64": ("linux-image-riscv64",),
        },
        boot_packages=_DEBIAN_BOOT,
    ),
    "ubuntu": Distro(
        name="ubuntu",
        family="deb",
        arches=_DEB_ARCHES,
        releases={
            "22.04": "jammy",
            "24.04": "noble",
            "25.04": "plucky",
            "25.10": "questing",
            "jammy": "jammy",
            "noble": "noble",
            "plucky": "plucky",
            "questing": "questing",
        },
        # mosquitto-clients and dracut's network parts live in universe on Ubuntu
        default_components=("main", "universe"),
        kernel_packages={"*": ("linux-image-generic",)},
        boot_packages=_DEBIAN_BOOT,
    ),
    "fedora": Distro(
        name="fedora",
        family="rpm",
        arches=_RPM_ARCHES,
        # 40 and older are certainly end-of-life (40 since May 2025); the original
        # tool's recipes are Fedora 28 to 32
        releases={"rawhide": "rawhide"},
        release_pattern=r"4[1-9]|[5-9][0-9]",
        eol_pattern=r"2[0-9]|3[0-9]|40",
        default_components=("fedora", "updates"),
        kernel_packages={"*": ("kernel",)},
        boot_packages=_RPM_BOOT,
        repo_paths={
            "fedora": "releases/$releasever/Everything/$basearch/os/",
            "updates": "updates/$releasever/Everything/$basearch/",
            "rawhide": "development/rawhide/Everything/$basearch/os/",
        },
        gpg_key_name="RPM-GPG-KEY-fedora-{major}-primary",
    ),
    "rocky": _el_rebuild("rocky", "RPM-GPG-KEY-Rocky-{major}"),
    "alma": _el_rebuild("alma", "RPM-GPG-KEY-AlmaLinux-{major}"),
    "centos-stream": Distro(
        name="centos-stream",
        family="rpm",
        arches=_RPM_ARCHES,
        releases={"9": "9", "10": "10"},
        default_components=_EL_REPOS,
        kernel_packages={"*": ("kernel",)},
        boot_packages=_RPM_BOOT,
        repo_paths=_el_paths("-stream"),
        gpg_key_name="RPM-GPG-KEY-centosofficial",
        eol_releases={"8": "CentOS Stream 8 is end-of-life (since 2024-05-31)"},
    ),
    # CentOS Linux, the original tool's main target: every release is past its end
    # of life and its packages live only in archives (vaults), so a recipe names its
    # repositories by baseurl; there is no mirror layout to derive them from.
    "centos": Distro(
        name="centos",
        family="rpm",
        arches=("x86_64", "aarch64", "ppc64le"),
        releases={},
        default_components=(),
        kernel_packages={"*": ("kernel",)},
        boot_packages=_RPM_BOOT,
        eol_releases={
            "7": "CentOS Linux 7 is end-of-life (since 2024-06-30)",
            "8": "CentOS Linux 8 is end-of-life (since 2021-12-31)",
        },
    ),
}


def get(name: str) -> Distro:
    """The distribution called name; ValueError listing the known ones otherwise."""
    try:
        return DISTROS[name]
    except KeyError:
        raise ValueError(f"unknown distro {name!r}; allowed: {', '.join(DISTROS)}") from None


def builder_for(name: str) -> str:
    """The backend that builds a distribution (mmdebstrap or dnf)."""
    return get(name).builder


def check_arch(distro: Distro, arch: str) -> str:
    """arch if the distribution's tools know it, else ValueError naming the allowed ones."""
    if arch not in distro.arches:
        raise ValueError(
            f"unknown {distro.name} architecture {arch!r}; allowed: {', '.join(distro.arches)}"
        )
    return arch


def package_set(distro: Distro, arch: str, packages: tuple[str, ...]) -> tuple[str, ...]:
    """The recipe's packages plus what the image needs to boot, sorted and without repeats."""
    return tuple(sorted({*packages, *distro.required_packages(arch)}))


# Files of the dracut configuration and the name of our overlay-root module,
# shared by every distribution (they live in base/).
DRACUT_MODULES = ("nfs", "network")
ROOTOVL_MODULE = "rootovl"


def dracut_argv(kver: str, initrd: str, add_drivers: tuple[str, ...] = ()) -> list[str]:
    """dracut in the image, for the image's own kernel (docs/design.md §8: -N, nfs and network);
    add_drivers: kernel modules beyond the lean set of base/'s dracut configuration."""
    extra = ["--add-drivers", " ".join(add_drivers)] if add_drivers else []
    return [
        "dracut", "-N", "--force", "--add", " ".join(DRACUT_MODULES), *extra,
        "--kver", kver, initrd,
    ]  # fmt: skip


def initrd_path(distro: Distro, kver: str) -> str:
    """Where the distribution keeps the initramfs of a kernel, inside the image."""
    if distro.family == "deb":
        return f"/boot/initrd.img-{kver}"
    return f"/boot/initramfs-{kver}.img"


# rpm: where the package database lives and in which format, per release. Fedora
# moved it to /usr/lib/sysimage/rpm in 36 and to sqlite in 33 (rpm 4.16); Enterprise
# Linux moved to sqlite in 9 and to /usr/lib/sysimage/rpm in 10, so EL 7 and 8 use
# Berkeley DB in /var/lib/rpm.
SYSIMAGE_RPMDB, LEGACY_RPMDB = "/usr/lib/sysimage/rpm", "/var/lib/rpm"
FEDORA_SQLITE, FEDORA_SYSIMAGE, EL_SQLITE, EL_SYSIMAGE = 33, 36, 9, 10


def release_major(release: str) -> int | None:
    """The major number of a numbered release ("9.4" -> 9), None for rawhide."""
    head = release.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def rpmdb_path(distro: Distro, release: str) -> str:
    """Where the image's rpm expects its database."""
    major = release_major(release)
    if major is None:  # rawhide
        return SYSIMAGE_RPMDB
    if major >= (FEDORA_SYSIMAGE if distro.name == "fedora" else EL_SYSIMAGE):
        return SYSIMAGE_RPMDB
    return LEGACY_RPMDB


def rpmdb_backend(distro: Distro, release: str) -> str:
    """The rpm database format of the image's rpm."""
    major = release_major(release)
    if major is None:
        return "sqlite"
    return "sqlite" if major >= (FEDORA_SQLITE if distro.name == "fedora" else EL_SQLITE) else "bdb"


def require_named_sources(
    distro: Distro, release: str, *, mirror: str | None, repositories: int
) -> None:
    """An end-of-life release builds only from sources the recipe names; ValueError if none.

    The build host's own repositories are of another release, and a distribution
    without a mirror layout (CentOS Linux) needs its repositories by baseurl.
    """
    why = distro.eol(release)
    if why is None or repositories or (mirror and distro.repo_paths):
        return
    need = "a mirror or [[repositories]]" if distro.repo_paths else "[[repositories]] by baseurl"
    raise ValueError(f"{why}: name its packages' source ({need}, e.g. an archive mirror)")


def repo_urls(distro: Distro, mirror: str, components: tuple[str, ...]) -> dict[str, str]:
    """Repository name -> baseurl under a mirror's root, for the named components."""
    unknown = [c for c in components if c not in distro.repo_paths]
    if unknown:
        raise ValueError(
            f"unknown {distro.name} repository {unknown[0]!r}; allowed: "
            f"{', '.join(distro.repo_paths)}"
        )
    root = mirror.rstrip("/")
    return {c: f"{root}/{distro.repo_paths[c]}" for c in components}


def gpg_key_url(distro: Distro, release: str, mirror: str | None) -> str | None:
    """The distribution's signing key: on the mirror's root, else the build host's copy."""
    if not distro.gpg_key_name:
        return None
    major = release_major(release)
    name = distro.gpg_key_name.format(major=major if major is not None else release)
    if distro.gpg_key_on_mirror and mirror:
        return f"{mirror.rstrip('/')}/{name}"
    return f"file:///etc/pki/rpm-gpg/{name}"
