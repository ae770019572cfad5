"""dnsmasq configuration: DHCP (full or proxy) and TFTP for netroot nodes."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, model_validator

from controller.core.model import Model
from controller.render.cmdline import GENERATED, PATH_ALLOWED, PATH_RE
from controller.render.grub import GRUB_DIR
from controller.render.ipxe import IPXE_ENTRY

_FILE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+@%~-]*(/[A-Za-z0-9_][A-Za-z0-9_.+@%~-]*)*")
FILE_ALLOWED = "a relative path of letters, digits and _ . + @ % ~ - joined by /, no . or .."
_IFACE_RE = re.compile(r"[A-Za-z0-9_.@-]{1,15}")
_LEASE_RE = re.compile(r"infinite|[0-9]+[smhdw]?")

# Client system architecture (DHCP option 93, RFC 4578). x86-64 UEFI firmware
# sends 7 or 9 depending on its vendor; both get the UEFI loader.
ARCH_BIOS = 0
ARCH_EFI_X86_64 = (7, 9)
# dnsmasq's names for those architectures in proxy mode (pxe-service CSA).
CSA_BIOS = "x86PC"
CSA_EFI_X86_64 = ("x86-64_EFI", "BC_EFI")


def _require(ok: bool, what: str, value: object, allowed: str) -> None:
    if not ok:
        raise ValueError(f"invalid {what} {value!r} (allowed: {allowed})")


class DnsmasqSpec(Model):
    """What the dnsmasq instance serving netroot nodes is told."""

    mode: Literal["full", "proxy"] = Field(
        description="full: hand out addresses; proxy: boot information beside an existing server"
    )
    network: str = Field(description="the nodes' IPv4 network, like 10.0.2.0/24")
    server: str = Field(description="this boot server's address on that network (TFTP)")
    tftp_root: str
    dhcp_script: str = Field(
        # dnsmasq takes a bare path here, no arguments: `netroot hook dhcp`
        # needs a one-line wrapper that execs it with "$@".
        description="executable dnsmasq runs on every lease change"
    )
    range_start: str | None = Field(None, description="first address to lease (full mode)")
    range_end: str | None = Field(None, description="last address to lease (full mode)")
    lease_time: str = "12h"
    router: str | None = Field(None, description="default gateway to hand out (full mode)")
    interface: str | None = None
    lease_file: str | None = None
    bios_loader: str = "pxelinux.0"
    uefi_loader: str = f"{GRUB_DIR}/grubx64.efi"
    ipxe_script: str | None = Field(IPXE_ENTRY, description="script for iPXE clients")
    log_dhcp: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> DnsmasqSpec:
        network = ipaddress.IPv4Network(self.network, strict=False)
        for what, address in (("server", self.server), ("router", self.router)):
            if address is not None:
                _require(
                    ipaddress.IPv4Address(address) in network,
                    what,
                    address,
                    f"an address in {network}",
                )
        if self.mode == "full":
            _require(
                self.range_start is not None and self.range_end is not None,
                "range",
                (self.range_start, self.range_end),
                "range_start and range_end in full mode",
            )
            start = ipaddress.IPv4Address(self.range_start)
            end = ipaddress.IPv4Address(self.range_end)
            for bound in (start, end):
                _require(bound in network, "range bound", str(bound), f"an address in {network}")
            _require(start <= end, "range", f"{start}-{end}", "range_start before range_end")
        else:
            _require(
                self.range_start is None and self.range_end is None and self.router is None,
                "proxy setting",
                "range/router",
                "none in proxy mode: the other server leases",
            )
        for what, path in (
            ("tftp_root", self.tftp_root),
            ("dhcp_script", self.dhcp_script),
            ("lease_file", self.lease_file),
        ):
            _require(path is None or PATH_RE.fullmatch(path) is not None, what, path, PATH_ALLOWED)
        for what, name in (
            ("bios_loader", self.bios_loader),
            ("uefi_loader", self.uefi_loader),
            ("ipxe_script", self.ipxe_script),
        ):
            _require(name is None or _FILE_RE.fullmatch(name) is not None, what, name, FILE_ALLOWED)
        _require(
            self.interface is None or _IFACE_RE.fullmatch(self.interface) is not None,
            "interface",
            self.interface,
            "a network interface name",
        )
        _require(
            _LEASE_RE.fullmatch(self.lease_time) is not None,
            "lease_time",
            self.lease_time,
            "seconds, or a number with s m h d w, or infinite",
        )
        return self


def _boot_lines(spec: DnsmasqSpec) -> list[str]:
    lines = [f"dhcp-match=set:bios,option:client-arch,{ARCH_BIOS}"]
    lines += [f"dhcp-match=set:efi-x86_64,option:client-arch,{arch}" for arch in ARCH_EFI_X86_64]
    plain = ""
    if spec.ipxe_script is not None:
        # iPXE announces itself with option 175; it gets the script rather
        # than the loader it is already past.
        lines += [
            "dhcp-match=set:ipxe,175",
            f"dhcp-boot=tag:ipxe,{spec.ipxe_script},,{spec.server}",
        ]
        plain = "tag:!ipxe,"
    lines += [
        f"dhcp-boot={plain}tag:bios,{spec.bios_loader},,{spec.server}",
        f"dhcp-boot={plain}tag:efi-x86_64,{spec.uefi_loader},,{spec.server}",
    ]
    if spec.mode == "proxy":
        # A proxy answers PXE firmware through pxe-service entries; one per
        # architecture and no pxe-prompt, so each firmware boots at once.
        lines.append(f'pxe-service={plain}{CSA_BIOS},"netroot",{spec.bios_loader}')
        lines += [
            f'pxe-service={plain}{csa},"netroot",{spec.uefi_loader}' for csa in CSA_EFI_X86_64
        ]
    return lines


def render_dnsmasq(spec: DnsmasqSpec) -> str:
    """The dnsmasq config file for the boot network."""
    network = ipaddress.IPv4Network(spec.network, strict=False)
    lines = [
        f"# {GENERATED}",
        "port=0",  # DHCP and TFTP only: the boot server is nobody's DNS server
    ]
    if spec.interface is not None:
        lines += [f"interface={spec.interface}", "bind-interfaces"]
    if spec.mode == "full":
        lines.append(
            f"dhcp-range={spec.range_start},{spec.range_end},{network.netmask},{spec.lease_time}"
        )
        if spec.router is not None:
            lines.append(f"dhcp-option=option:router,{spec.router}")
    else:
        lines.append(f"dhcp-range={network.network_address},proxy,{network.netmask}")
    if spec.lease_file is not None:
        lines.append(f"dhcp-leasefile={spec.lease_file}")
    # dnsmasq runs the hook as `SCRIPT add|old|del MAC IP [HOSTNAME]`: the
    # controller learns of every node that asks for an address.
    lines.append(f"dhcp-script={spec.dhcp_script}")
    if spec.log_dhcp:
        lines.append("log-dhcp")
    lines += ["enable-tftp", f"tftp-root={spec.tftp_root}"]
    lines += _boot_lines(spec)
    return "\n".join(lines) + "\n"
