"""iPXE scripts: an entry script that picks a per-MAC script or the default one."""

from __future__ import annotations

from controller.render.cmdline import (
    GENERATED,
    INITRD_NAME,
    KERNEL_NAME,
    BootTarget,
    boot_url,
    kernel_cmdline,
    mac_file_id,
)

IPXE_DIR = "ipxe"
IPXE_ENTRY = f"{IPXE_DIR}/boot.ipxe"
IPXE_DEFAULT = f"{IPXE_DIR}/default.ipxe"


def ipxe_mac_path(mac: str) -> str:
    """The per-MAC script, relative to the TFTP root."""
    return f"{IPXE_DIR}/{mac_file_id(mac)}.ipxe"


def render_ipxe_entry() -> str:
    """The script DHCP hands to iPXE clients: the client's per-MAC script, else the default."""
    # Fetch first and execute second: a per-MAC script that fails to boot must
    # stop with its error, not fall back to another label. `/` paths resolve
    # against this script's URI, so they name files from the TFTP root.
    per_mac = f"/{IPXE_DIR}/01-${{mac:hexhyp}}.ipxe"  # iPXE expands the MAC, hyphenated
    return "\n".join(
        [
            "#!ipxe",
            f"# {GENERATED}",
            f"imgfetch --name netroot-mac {per_mac} || goto netroot-default",
            "imgexec netroot-mac",
            ":netroot-default",
            f"chain /{IPXE_DEFAULT}",
            "",
        ]
    )


def render_ipxe(target: BootTarget) -> str:
    """A script that boots one target."""
    # A UEFI kernel started by iPXE finds its initramfs through `initrd=NAME`,
    # NAME being the image name iPXE gives it: the file's basename.
    initrd_name = target.initrd_path.rsplit("/", 1)[-1]
    if target.http_port is None:  # `/` paths: from the TFTP root this script came from
        kernel, initrd = f"/{target.kernel_path}", f"/{target.initrd_path}"
    else:  # the controller's boot file server: TCP, not TFTP's one block per round trip
        kernel, initrd = boot_url(target, KERNEL_NAME), boot_url(target, INITRD_NAME)
    return "\n".join(
        [
            "#!ipxe",
            f"# {GENERATED}",
            f"# {target.label} version {target.version}",
            f"kernel {kernel} initrd={initrd_name} {kernel_cmdline(target)}",
            f"initrd {initrd}",
            "boot",
            "",
        ]
    )
