"""The guest `netroot boot` starts: its options, MAC, boot target, TFTP root and qemu spec.

Pure enough to test without a VM: nothing here starts a process.
"""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from controller.config.models import Config
from controller.core.errors import NetrootError
from controller.render import BootTarget, boot_target, kernel_cmdline
from controller.render.cmdline import INITRD_NAME, KERNEL_NAME
from controller.render.ipxe import IPXE_ENTRY
from controller.serve import loaders, tftp
from controller.store.layout import label_paths
from controller.vm.qemu import (
    GUEST_HTTP_PORT,
    GUEST_MQTT_PORT,
    GUEST_NFS_PORT,
    GUEST_SERVER,
    OVMF_CODE,
    OVMF_VARS,
    Accel,
    AccelRequest,
    BootFiles,
    DirectKernel,
    Forward,
    VmSpec,
)
from controller.vm.servers import console_socket

CONSOLE_ARG = "console=ttyS0,115200"
GRUB_BOOTFILE = loaders.GRUB_IMAGE


@dataclass(frozen=True)
class BootOptions:
    """What `netroot boot` was asked for."""

    label: str
    headless: bool = False
    console: bool = False  # join this terminal to the VM's console (vm.console)
    timeout: float | None = None
    uefi: bool = False
    direct: bool = False
    ssh_port: int | None = 2222
    mac: str | None = None
    memory_mb: int = 1024
    accel: AccelRequest = "auto"
    stop_after_report: bool = False
    stall: float | None = None  # seconds without a new milestone (None: by accel; 0: no bound)
    ssh_key: str | None = None  # an ssh public key line root accepts on this VM only
    # http: qemu's iPXE runs the iPXE script from TFTP, then loads kernel and
    # initramfs from the boot file server; tftp: pxelinux loads all over TFTP
    boot_files: BootFiles = "http"
    # PXE again when the guest reboots (an agent's `reboot`, a canary rollout's),
    # through the menus as they are then; off: a reset stops the VM
    reboot: bool = False

    @property
    def over_http(self) -> bool:
        """Whether kernel and initramfs come from the boot file server (BIOS PXE only)."""
        return self.boot_files == "http" and not self.uefi and not self.direct


def random_mac() -> str:
    """A locally administered unicast MAC in qemu's 52:54:00 range."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


_SSH_KEY_TYPE = re.compile(r"(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-[a-z0-9@.-]+)")
_SSH_KEY_BLOB = re.compile(r"[A-Za-z0-9+/]+=*")


def ssh_key_word(public_key: str, source: str) -> str:
    """`netroot.ssh_key=TYPE:BASE64` for an OpenSSH public key line: the node agent's
    netroot-node-keys adds it to root's authorized_keys (kernel command line words
    cannot hold the spaces of the usual form)."""
    fields = public_key.split()
    if len(fields) < 2 or not _SSH_KEY_TYPE.fullmatch(fields[0]):
        raise NetrootError(f"{source}: not an ssh public key (TYPE BASE64 [COMMENT])")
    if not _SSH_KEY_BLOB.fullmatch(fields[1]):
        raise NetrootError(f"{source}: the key is not base64")
    return f"netroot.ssh_key={fields[0]}:{fields[1]}"


def vm_target(
    config: Config, label: str, version: str, ssh_key: str | None = None, *, http: bool = False
) -> BootTarget:
    """The boot target as the guest sees it: everything at GUEST_SERVER, a serial console."""
    target = boot_target(
        config,
        label,
        version,
        server=GUEST_SERVER,
        mqtt_host=GUEST_SERVER if config.mqtt.enabled else None,
        mqtt_port=GUEST_MQTT_PORT,
        nfs="ganesha",
    )
    extra = target.extra_cmdline
    # Milestones are read from the serial console (debug mode already adds it).
    if not target.debug and not any(word.startswith("console=ttyS0") for word in extra):
        extra = (*extra, CONSOLE_ARG)
    if ssh_key is not None:  # this VM's own menu: never the version's files
        extra = (*extra, ssh_key_word(ssh_key, "--ssh-key"))
    http_port = GUEST_HTTP_PORT if http else None
    return target.model_copy(update={"extra_cmdline": extra, "http_port": http_port})


def prepare_tftp(
    config: Config,
    target: BootTarget,
    tftp_root: Path,
    *,
    uefi: bool,
    pins: Mapping[str, BootTarget] | None = None,
) -> None:
    """The private TFTP root: loaders, this label's menus and its version links.

    pins: the guest's per-MAC menu when a canary rollout pins its MAC
    (controller.store.canary), as the real TFTP root has it.
    """
    report = loaders.install_loaders(tftp_root, grub=uefi)
    needed = [GRUB_BOOTFILE] if uefi else ["pxelinux.0", "ldlinux.c32"]
    missing = [name for name in needed if name not in report.installed]
    if missing:
        raise NetrootError(
            f"boot loader files missing: {', '.join(missing)} ({'; '.join(report.missing)})"
        )
    links = tftp.version_links(config, [target.label])
    plan = tftp.plan_boot([target], links, default=target.label, macs={}, pins=pins)
    tftp.write_plan(tftp_root, plan)


def bootfile(options: BootOptions) -> str:
    """What qemu's DHCP names: GRUB (UEFI), the iPXE entry script (HTTP) or pxelinux."""
    if options.uefi:
        return GRUB_BOOTFILE
    # qemu's PXE ROM is iPXE: it runs a script it fetched as the boot file.
    return IPXE_ENTRY if options.over_http else "pxelinux.0"


def vm_spec(
    config: Config,
    options: BootOptions,
    target: BootTarget,
    run_dir: Path,
    *,
    mac: str,
    nfs_port: int,
    accel: Accel,
    http_port: int | None = None,
) -> VmSpec:
    """The VM for this boot: forwards to loopback servers, firmware, kernel or loader."""
    forwards = [Forward(GUEST_NFS_PORT, "127.0.0.1", nfs_port)]
    if http_port is not None:
        forwards.append(Forward(GUEST_HTTP_PORT, "127.0.0.1", http_port))
    if config.mqtt.enabled:
        forwards.append(Forward(GUEST_MQTT_PORT, config.mqtt.host, config.mqtt.port))
    uefi_vars = None
    if options.uefi:
        uefi_vars = run_dir / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, uefi_vars)
    direct = None
    if options.direct:
        boot = label_paths(config, options.label).boot(target.version)
        direct = DirectKernel(boot / KERNEL_NAME, boot / INITRD_NAME, kernel_cmdline(target))
    console = console_socket(run_dir)
    console.parent.mkdir(mode=0o700, exist_ok=True)
    return VmSpec(
        name=f"netroot-{options.label}",
        mac=mac,
        serial_log=run_dir / "serial.log",
        console_socket=console,
        pid_file=run_dir / "qemu.pid",
        forwards=tuple(forwards),
        tftp_root=None if options.direct else run_dir / "tftp",
        bootfile=bootfile(options),
        direct=direct,
        ssh_port=options.ssh_port,
        memory_mb=options.memory_mb,
        accel=accel,
        uefi_vars=uefi_vars,
        uefi_code=OVMF_CODE,
        extra=config.label(options.label).extra_qemu,
        reboot=options.reboot and not options.direct,
    )
