"""Pure renderers: boot loader menus, NFS exports, Ganesha and dnsmasq configs.

Text in, text out: nothing here reads or writes a file. The caller writes each
rendered file atomically (docs/design.md §5).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from controller.core.errors import StoreError
from controller.core.ids import check_mac
from controller.render.cmdline import (
    BootTarget,
    boot_menu,
    boot_target,
    kernel_cmdline,
    mac_file_id,
)
from controller.render.dnsmasq import DnsmasqSpec, render_dnsmasq
from controller.render.exports import ExportSpec, export_specs, fsid_for, render_exports
from controller.render.ganesha import export_id_for, export_ids, pseudo_path, render_ganesha
from controller.render.grub import GRUB_DEFAULT, grub_mac_path, render_grub
from controller.render.ipxe import (
    IPXE_DEFAULT,
    IPXE_ENTRY,
    ipxe_mac_path,
    render_ipxe,
    render_ipxe_entry,
)
from controller.render.pxelinux import PXELINUX_DEFAULT, pxelinux_mac_path, render_pxelinux

__all__ = [
    "BootTarget",
    "DnsmasqSpec",
    "ExportSpec",
    "boot_target",
    "check_mac",
    "export_id_for",
    "export_ids",
    "export_specs",
    "fsid_for",
    "grub_mac_path",
    "ipxe_mac_path",
    "kernel_cmdline",
    "mac_file_id",
    "pseudo_path",
    "pxelinux_mac_path",
    "render_all",
    "render_dnsmasq",
    "render_exports",
    "render_ganesha",
    "render_grub",
    "render_ipxe",
    "render_ipxe_entry",
    "render_pxelinux",
]


def render_all(
    targets: Iterable[BootTarget],
    *,
    default: str,
    macs: Mapping[str, str] | None = None,
    pins: Mapping[str, BootTarget] | None = None,
) -> dict[str, str]:
    """Every TFTP-side boot file by path relative to the TFTP root; raise before rendering any.

    macs: per-MAC overrides, MAC -> label (its served version). pins: MAC ->
    the target of another version of a served label (a canary rollout's
    nodes): the MAC's files boot it, the other labels' entries as served.
    """
    menu = boot_menu(targets, default)
    by_label = {target.label: target for target in menu}
    overrides = dict(sorted((macs or {}).items()))
    pinned = dict(sorted((pins or {}).items()))
    for mac, target in pinned.items():
        check_mac(mac, source="canary pins")
        if target.label not in by_label:
            raise StoreError(f"canary {mac} pins label {target.label!r}, which is not served")
        overrides.pop(mac, None)
    for mac, label in overrides.items():
        check_mac(mac, source="per-MAC boot overrides")
        if label not in by_label:
            raise StoreError(
                f"MAC {mac} should boot label {label!r}, which has no version to serve:"
                " build and activate one first"
            )
    files = {
        PXELINUX_DEFAULT: render_pxelinux(menu, default),
        IPXE_ENTRY: render_ipxe_entry(),
        IPXE_DEFAULT: render_ipxe(by_label[default]),
        GRUB_DEFAULT: render_grub(menu, default),
    }
    for mac, label in overrides.items():
        files[pxelinux_mac_path(mac)] = render_pxelinux(menu, label)
        files[ipxe_mac_path(mac)] = render_ipxe(by_label[label])
        files[grub_mac_path(mac)] = render_grub(menu, label)
    for mac, target in pinned.items():
        own = tuple(target if t.label == target.label else t for t in menu)
        files[pxelinux_mac_path(mac)] = render_pxelinux(own, target.label)
        files[ipxe_mac_path(mac)] = render_ipxe(target)
        files[grub_mac_path(mac)] = render_grub(own, target.label)
    return files
