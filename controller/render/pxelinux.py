"""pxelinux (BIOS PXE) configuration: the default file and per-MAC overrides."""

from __future__ import annotations

from collections.abc import Iterable

from controller.render.cmdline import GENERATED, BootTarget, boot_menu, kernel_cmdline, mac_file_id

PXELINUX_DIR = "pxelinux.cfg"
PXELINUX_DEFAULT = f"{PXELINUX_DIR}/default"


def pxelinux_mac_path(mac: str) -> str:
    """The per-MAC file pxelinux looks for before `default`, relative to the TFTP root."""
    return f"{PXELINUX_DIR}/{mac_file_id(mac)}"


def render_pxelinux(targets: Iterable[BootTarget], default: str) -> str:
    """A pxelinux config with one entry per label, booting `default` at once."""
    entries = boot_menu(targets, default)
    lines = [
        f"# {GENERATED}",
        # Mirror the loader on the first serial port: headless nodes and qemu
        # -nographic show it there; on a machine without one it costs nothing.
        "SERIAL 0 115200",
        f"DEFAULT {default}",
        # Boot at once; holding Shift or Alt still gives a prompt to pick a label.
        "PROMPT 0",
        "TIMEOUT 0",
    ]
    for target in entries:
        # Paths are relative: pxelinux resolves them against the directory it
        # was loaded from, the TFTP root.
        lines += [
            "",
            f"LABEL {target.label}",
            f"  # version {target.version}",
            f"  KERNEL {target.kernel_path}",
            f"  INITRD {target.initrd_path}",
            f"  APPEND {kernel_cmdline(target)}",
        ]
    return "\n".join(lines) + "\n"
