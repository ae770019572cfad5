"""Recipe models. Every recipe is a frozen model with a `builder` discriminator."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import Field, ValidationInfo, field_validator, model_validator

from controller.core.model import Model
from controller.recipes import distros


class ImportRecipe(Model):
    """Adopt an existing root tree (a directory or a tar archive) as the base."""

    builder: Literal["import"]
    source: Path = Field(description="directory or tar archive (any compression tar reads)")
    kernel: str | None = Field(
        None, description="kernel path inside the tree; default: newest /boot/vmlinuz-*"
    )
    initrd: str | None = Field(
        None, description="initramfs path inside the tree; default: the one matching the kernel"
    )


# crypt(5) hashes: yescrypt, gost-yescrypt, sha512/256-crypt, bcrypt, md5-crypt;
# or a locked password ('!' or '*', optionally followed by a hash).
_CRYPT_RE = re.compile(r"!?(\$(y|gy|7|6|5|2[aby]|1)\$[./A-Za-z0-9$=,]{8,}|!|\*)")
_PACKAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9+._:@/=~-]*")  # names, name=version, name/suite
_UNIT_RE = re.compile(r"[A-Za-z0-9:_.\\@-]+")
_LOCALE_RE = re.compile(r"[A-Za-z]{2,3}(_[A-Z]{2})?(\.[A-Za-z0-9-]+)?(@[a-z]+)?|C(\.UTF-8)?|POSIX")
_TZ_RE = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*")


class FileCopy(Model):
    """A file or directory copied from beside the recipe into the image."""

    src: Path = Field(description="relative to the recipe file that names it")
    dest: str = Field(description="absolute path inside the image")
    mode: str | None = Field(None, pattern=r"^[0-7]{3,4}$", description="octal mode, e.g. 0600")

    @field_validator("dest")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or ".." in value.split("/"):
            raise ValueError(f"dest {value!r} must be an absolute path without '..'")
        return value


def _all_match(pattern: re.Pattern[str], what: str, names: tuple[str, ...]) -> tuple[str, ...]:
    for name in names:
        if not pattern.fullmatch(name):
            raise ValueError(f"invalid {what} {name!r}")
    return names


class Services(Model):
    """systemd units to enable or disable in the image."""

    enable: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()

    @field_validator("enable", "disable")
    @classmethod
    def _units(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _all_match(_UNIT_RE, "unit name", value)


class PackageRecipe(Model):
    """A root tree installed from a distribution's packages (the native TOML recipe)."""

    distro: distros.DistroName
    release: str
    arch: str = Field("", description="default: the distribution's name for x86-64")
    mirror: str | None = Field(None, description="default: the package tool's own default")
    components: tuple[str, ...] = Field((), description="default: the distribution's")
    packages: tuple[str, ...] = ()
    files: tuple[FileCopy, ...] = ()
    post: str = Field("", description="shell script run inside the image (sh -e)")
    root_password_hash: str | None = Field(None, description="crypt(5) hash, e.g. mkpasswd")
    root_password: str | None = Field(
        None, description="plaintext; refused unless loaded with the insecure test flag"
    )
    locale: str | None = None
    timezone: str | None = None
    services: Services = Services()

    @model_validator(mode="before")
    @classmethod
    def _distro_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("distro"), str):
            known = distros.DISTROS.get(data["distro"])
            if known is not None:
                if not data.get("arch"):
                    data = {**data, "arch": known.default_arch}
                if not data.get("components"):
                    data = {**data, "components": known.default_components}
        return data

    @field_validator("release")
    @classmethod
    def _release(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("distro") in distros.DISTROS:
            distros.get(info.data["distro"]).suite(value)
        return value

    @field_validator("arch")
    @classmethod
    def _arch(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("distro") in distros.DISTROS:
            distros.check_arch(distros.get(info.data["distro"]), value)
        return value

    @field_validator("packages")
    @classmethod
    def _package_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _all_match(_PACKAGE_RE, "package name", value)

    @field_validator("root_password_hash")
    @classmethod
    def _crypt_hash(cls, value: str | None) -> str | None:
        if value is not None and not _CRYPT_RE.fullmatch(value):
            raise ValueError("not a crypt(5) hash like $y$... or $6$... (make one with mkpasswd)")
        return value

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str | None) -> str | None:
        if value is not None and not _LOCALE_RE.fullmatch(value):
            raise ValueError(f"invalid locale {value!r}; e.g. en_US.UTF-8")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if value is not None and (not _TZ_RE.fullmatch(value) or ".." in value):
            raise ValueError(f"invalid timezone {value!r}; e.g. Europe/Rome or UTC")
        return value

    @property
    def info(self) -> distros.Distro:
        """The distribution's knowledge for this recipe."""
        return distros.get(self.distro)

    @property
    def suite(self) -> str:
        """The suite or release the package tool takes."""
        return self.info.suite(self.release)

    @property
    def package_set(self) -> tuple[str, ...]:
        """Packages to install: the recipe's plus what booting needs, sorted, unique."""
        return distros.package_set(self.info, self.arch, self.packages)


class MmdebstrapRecipe(PackageRecipe):
    """Debian and Ubuntu, built with mmdebstrap."""

    builder: Literal["mmdebstrap"]
    distro: Literal["debian", "ubuntu"]


_REPO_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_URL_RE = re.compile(r"(https?|ftp|file)://\S+")


class DnfRepository(Model):
    """One package repository for dnf, given by its baseurl."""

    name: str = Field(description="repository id, e.g. epel or site-local")
    baseurl: str = Field(
        description="http(s):// or file:// URL; dnf expands $releasever, $basearch"
    )
    gpgkey: str | None = Field(None, description="URL of the signing key (file:// allowed)")
    gpgcheck: bool | None = Field(None, description="default: the recipe's gpgcheck")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _REPO_NAME_RE.fullmatch(value):
            raise ValueError(f"invalid repository name {value!r}")
        return value

    @field_validator("baseurl", "gpgkey")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not _URL_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not an http(s)://, ftp:// or file:// URL")
        return value


class DnfRecipe(PackageRecipe):
    """Fedora, Rocky, Alma and CentOS Stream, built with dnf --installroot.

    `mirror` is a mirror's root: `components` name the repositories under it
    (BaseOS, AppStream... or fedora, updates). `repositories` add repositories
    by baseurl. With neither, dnf uses the build host's own repositories.
    """

    builder: Literal["dnf"]
    distro: Literal["fedora", "rocky", "alma", "centos-stream", "centos"]
    repositories: tuple[DnfRepository, ...] = ()
    gpgcheck: bool = Field(True, description="check package signatures")
    gpgkeys: tuple[str, ...] = Field(
        (), description="keys for the mirror's repositories; default: the distribution's"
    )

    @field_validator("components")
    @classmethod
    def _repos(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if info.data.get("distro") in distros.DISTROS:
            distros.repo_urls(distros.get(info.data["distro"]), "file:///", value)
        return value

    @field_validator("repositories")
    @classmethod
    def _unique(cls, value: tuple[DnfRepository, ...]) -> tuple[DnfRepository, ...]:
        names = [r.name for r in value]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"repository {name!r} is named twice")
        return value

    @model_validator(mode="after")
    def _end_of_life(self) -> DnfRecipe:
        distros.require_named_sources(
            self.info, self.release, mirror=self.mirror, repositories=len(self.repositories)
        )
        return self


DefBuilderName = Literal["def", "apptainer", "singularity"]


class DefRecipe(Model):
    """A legacy Singularity/Apptainer `.def` recipe (controller.recipes.legacy_def).

    `native` is the native recipe it maps to (debootstrap -> mmdebstrap, yum or
    dnf -> dnf), with %files as files and %post as post. builder "def" builds it
    with netroot's own backends; "apptainer" or "singularity" hands the file to
    that tool (a label chooses it with a TOML recipe naming the definition).
    """

    builder: DefBuilderName
    definition: Path = Field(description="the .def file")
    bootstrap: Literal["yum", "dnf", "debootstrap"]
    native: Annotated[MmdebstrapRecipe | DnfRecipe, Field(discriminator="builder")]
    setup: str = Field("", description="%setup: run on the host before %files and %post")
    environment: str = Field("", description="%environment: sourced by login shells")
    notices: tuple[str, ...] = Field((), description="what was ignored, for the build log")
    warnings: tuple[str, ...] = Field((), description="risky lines, e.g. a plaintext password")
    lines: dict[str, int] = Field(default_factory=dict, description="section -> its line")

    def where(self, section: str) -> str:
        """`file.def:LINE` of a section, for error messages."""
        line = self.lines.get(section)
        return f"{self.definition}:{line}" if line else str(self.definition)


Recipe: TypeAlias = Annotated[
    ImportRecipe | MmdebstrapRecipe | DnfRecipe | DefRecipe, Field(discriminator="builder")
]
# what a TOML recipe's `builder` may say (a .def file is recognised by its name)
BUILDERS = ("import", "mmdebstrap", "dnf", "def", "apptainer", "singularity")
