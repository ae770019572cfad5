"""Boot loader files in a TFTP root: pxelinux and iPXE from their packages, a network GRUB image.

`netroot install` and `netroot boot` put them there; they never change with an
activation (controller.serve.tftp renders what does).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from controller.core import proc
from controller.render.grub import GRUB_DIR
from controller.render.ipxe import IPXE_DIR
from controller.store import fsops
from controller.store.layout import TMP_MARK


@dataclass(frozen=True)
class Loader:
    """A boot loader file copied from a Debian package into the TFTP root."""

    dest: str
    sources: tuple[str, ...]
    package: str


LOADERS = (
    Loader("pxelinux.0", ("/usr/lib/PXELINUX/pxelinux.0",), "pxelinux"),
    # pxelinux loads its core module from the directory it came from.
    Loader("ldlinux.c32", ("/usr/lib/syslinux/modules/bios/ldlinux.c32",), "syslinux-common"),
    Loader(f"{IPXE_DIR}/undionly.kpxe", ("/usr/lib/ipxe/undionly.kpxe",), "ipxe"),
    Loader(f"{IPXE_DIR}/ipxe.efi", ("/usr/lib/ipxe/ipxe.efi",), "ipxe"),
)
GRUB_IMAGE = f"{GRUB_DIR}/grubx64.efi"  # what DnsmasqSpec hands UEFI clients
GRUB_MODULE_DIR = Path("/usr/lib/grub/x86_64-efi")
GRUB_MODULES = (
    "normal", "configfile", "linux", "boot", "efinet", "net", "tftp", "gzio", "echo", "test",
    "sleep", "reboot", "halt", "ls", "cat", "efi_gop", "efi_uga", "serial", "terminal",
)  # fmt: skip


def grub_mkimage_argv(output: Path, module_dir: Path = GRUB_MODULE_DIR) -> list[str]:
    """A network GRUB image for x86-64 UEFI reading /grub/grub.cfg from its TFTP server."""
    # The prefix has no device: GRUB takes the one it was loaded from, the
    # TFTP server, so the same image works behind any boot server address.
    return [
        "grub-mkimage",
        "--format=x86_64-efi",
        f"--directory={os.fspath(module_dir)}",
        f"--prefix=/{GRUB_DIR}",
        f"--output={os.fspath(output)}",
        *GRUB_MODULES,
    ]


@dataclass
class LoaderReport:
    """Loader files installed, and those whose package is missing."""

    installed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def install_loaders(
    tftp_root: Path,
    *,
    loaders: Iterable[Loader] = LOADERS,
    grub: bool = True,
    grub_modules: Path = GRUB_MODULE_DIR,
) -> LoaderReport:
    """Copy the loaders of the installed packages into the TFTP root; build GRUB's image."""
    report = LoaderReport()
    for loader in loaders:
        source = next((Path(s) for s in loader.sources if Path(s).is_file()), None)
        if source is None:
            report.missing.append(f"{loader.dest} (package {loader.package})")
            continue
        fsops.write_if_changed(tftp_root / loader.dest, source.read_bytes())
        report.installed.append(loader.dest)
    if not grub:
        return report
    if (grub_modules / "normal.mod").is_file():
        dest = tftp_root / GRUB_IMAGE
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged = dest.with_name(f"{dest.name}{TMP_MARK}mkimage")
        proc.run(grub_mkimage_argv(staged, grub_modules))
        os.replace(staged, dest)
        report.installed.append(GRUB_IMAGE)
    else:
        report.missing.append(f"{GRUB_IMAGE} (package grub-efi-amd64-bin)")
    return report
