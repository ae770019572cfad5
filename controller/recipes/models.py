"""Recipe models. Every recipe is a frozen model with a `builder` discriminator."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import Field, ValidationInfo, field_validator, model_validator

from controller import distros
from controller.config import Model


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


class Services(Model):
    """systemd units to enable or disable in the image."""

    enable: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()

    @field_validator("enable", "disable")
    @classmethod
    def _units(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for unit in value:
            if not _UNIT_RE.fullmatch(unit):
                raise ValueError(f"invalid unit name {unit!r}")
        return value


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
        for name in value:
            if not _PACKAGE_RE.fullmatch(name):
                raise ValueError(f"invalid package name {name!r}")
        return value

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


class DnfRecipe(PackageRecipe):
    """Fedora, Rocky, Alma and CentOS Stream, built with dnf --installroot."""

    builder: Literal["dnf"]
    distro: Literal["fedora", "rocky", "alma", "centos-stream"]


Recipe: TypeAlias = Annotated[
    ImportRecipe | MmdebstrapRecipe | DnfRecipe, Field(discriminator="builder")
]
BUILDERS = ("import", "mmdebstrap", "dnf")
