"""GRUB configuration for UEFI network boot: grub.cfg and per-MAC overrides."""

from __future__ import annotations

from collections.abc import Iterable

from controller.render.cmdline import GENERATED, BootTarget, boot_menu, kernel_cmdline, mac_file_id

# Must match the prefix built into the network GRUB image the TFTP root serves
# (`grub-mkimage -p /grub`; with it GRUB 2.06 under OVMF read these files).
GRUB_DIR = "grub"
GRUB_DEFAULT = f"{GRUB_DIR}/grub.cfg"


def grub_mac_path(mac: str) -> str:
    """The per-MAC file GRUB (2.04 and later) tries before grub.cfg, relative to the TFTP root."""
    return f"{GRUB_DIR}/grub.cfg-{mac_file_id(mac)}"


def render_grub(targets: Iterable[BootTarget], default: str) -> str:
    """A grub.cfg with one menu entry per label, booting `default` at once."""
    entries = boot_menu(targets, default)
    lines = [f"# {GENERATED}", f"set default={default}", "set timeout=0"]
    for target in entries:
        # After a network boot GRUB's root is the TFTP server, so `/` paths
        # name files from the TFTP root. Command-line words hold no character
        # GRUB would expand (see cmdline.ARG_RE), so they need no quoting.
        lines += [
            "",
            f"menuentry '{target.label} {target.version}' --id {target.label} {{",
            f"\tlinux /{target.kernel_path} {kernel_cmdline(target)}",
            f"\tinitrd /{target.initrd_path}",
            "}",
        ]
    return "\n".join(lines) + "\n"
