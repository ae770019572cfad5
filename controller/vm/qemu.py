"""qemu command lines for `netroot boot` (pure argv builders, golden-tested), the KVM decision.

The guest gets qemu's user-mode network with `restrict=on`: it reaches
nothing but qemu's own DHCP and TFTP and the guestfwd addresses, each a
socat to one loopback service (docs/design.md §8). libslirp splits a guestfwd
command on spaces and runs it without a shell, so nothing here is ever
interpreted by one; commas in option values are doubled, qemu's escape.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from controller.core.model import Model

QEMU = "qemu-system-x86_64"
GUEST_SERVER = "10.0.2.100"  # where the guest finds NFS and MQTT (guestfwd)
GUEST_NFS_PORT = 2049
GUEST_MQTT_PORT = 1883
GUEST_HTTP_PORT = 80  # the boot file server (kernel and initramfs for iPXE)
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")

BootFiles = Literal["http", "tftp"]  # how the loader fetches kernel and initramfs
BOOT_FILES: tuple[BootFiles, ...] = get_args(BootFiles)
Accel = Literal["tcg", "kvm"]
AccelRequest = Literal["auto", "tcg", "kvm"]


@dataclass(frozen=True)
class Forward:
    """Guest connections to GUEST_SERVER:guest_port go to host:host_port."""

    guest_port: int
    host: str
    host_port: int


@dataclass(frozen=True)
class DirectKernel:
    """Boot a kernel directly (no firmware PXE, no TFTP)."""

    kernel: Path
    initrd: Path
    append: str


@dataclass(frozen=True)
class VmSpec:
    """One test VM."""

    name: str
    mac: str
    serial_log: Path
    console_socket: Path
    pid_file: Path
    forwards: tuple[Forward, ...] = ()
    tftp_root: Path | None = None  # PXE boot from qemu's built-in TFTP server
    bootfile: str = "pxelinux.0"
    direct: DirectKernel | None = None
    ssh_port: int | None = 2222
    memory_mb: int = 1024
    accel: Accel = "tcg"
    uefi_vars: Path | None = None  # a writable copy of OVMF_VARS: boot with OVMF
    uefi_code: Path = OVMF_CODE
    extra: tuple[str, ...] = ()
    reboot: bool = False  # a guest reset boots again (PXE) instead of ending qemu


def _opt(value: str | os.PathLike[str]) -> str:
    """A value inside a qemu -opt list: commas doubled."""
    return os.fspath(value).replace(",", ",,")


def socat_target(host: str, port: int) -> str:
    """socat's address for a TCP service (IPv6 in brackets)."""
    return f"TCP:[{host}]:{port}" if ":" in host else f"TCP:{host}:{port}"


def netdev_arg(spec: VmSpec) -> str:
    """The user-mode network: restricted, PXE from the TFTP root, forwards only."""
    parts = ["user", "id=n0", "restrict=on"]
    if spec.tftp_root is not None:
        parts += [f"tftp={_opt(spec.tftp_root)}", f"bootfile={_opt(spec.bootfile)}"]
    if spec.ssh_port is not None:
        # as the original's startnfs: ssh -p 2222 root@localhost (loopback only)
        parts.append(f"hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22")
    for fwd in spec.forwards:
        command = f"socat - {socat_target(fwd.host, fwd.host_port)}"
        parts.append(f"guestfwd=tcp:{GUEST_SERVER}:{fwd.guest_port}-cmd:{_opt(command)}")
    return ",".join(parts)


def qemu_argv(spec: VmSpec) -> list[str]:
    """The whole qemu command line for a test VM."""
    argv = [QEMU, "-name", spec.name, "-accel", spec.accel]
    if spec.accel == "kvm":
        argv += KVM_CPU
    argv += [
        "-m", str(spec.memory_mb), "-smp", "1",
        "-display", "none", "-monitor", "none",
        *([] if spec.reboot else ["-no-reboot"]),
        "-pidfile", os.fspath(spec.pid_file),
        # The console is logged (milestones are read from the log) and
        # reachable on a socket for an interactive session.
        "-chardev",
        f"socket,id=s0,path={_opt(spec.console_socket)},server=on,wait=off,"
        f"logfile={_opt(spec.serial_log)}",
        "-serial", "chardev:s0",
        "-netdev", netdev_arg(spec),
        "-device", f"virtio-net-pci,netdev=n0,mac={spec.mac}",
    ]  # fmt: skip
    if spec.uefi_vars is not None:
        argv += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_opt(spec.uefi_code)}",
            "-drive", f"if=pflash,format=raw,unit=1,file={_opt(spec.uefi_vars)}",
        ]  # fmt: skip
    if spec.direct is not None:
        argv += [
            "-kernel", os.fspath(spec.direct.kernel),
            "-initrd", os.fspath(spec.direct.initrd),
            "-append", spec.direct.append,
        ]  # fmt: skip
    else:
        argv += ["-boot", "n"]
    return [*argv, *spec.extra]


KVM_CPU = ("-cpu", "host")  # what a KVM VM runs with, so the probe tries the same
PROBE_APPEND = "console=ttyS0 panic=-1"  # print on the serial port; no root: panic, exit
PROBE_SIGN = "Linux version"  # the kernel's first console line: the guest really runs


class KvmProbe(Model):
    """Whether a KVM guest was seen running on this host since it booted (a cache entry)."""

    boot_id: str  # /proc/sys/kernel/random/boot_id: the host boot this holds for
    runs: bool
    detail: str  # what was seen, for the one line printed
    kernel: str = ""  # the kernel the probe booted


def kvm_probe_argv(kernel: Path, serial_log: Path) -> list[str]:
    """A KVM guest booting kernel with no root: it prints PROBE_SIGN, panics and quits."""
    # `qemu -accel kvm -S` starting proves nothing: on machines of this kind
    # /dev/kvm opens and qemu starts, yet the guest hangs or resets (docs/design.md §8).
    return [
        QEMU, "-accel", "kvm", *KVM_CPU, "-machine", "pc", "-nodefaults", "-no-user-config",
        "-m", "256", "-smp", "1", "-display", "none", "-monitor", "none", "-no-reboot",
        "-chardev", f"file,id=s0,path={_opt(serial_log)}", "-serial", "chardev:s0",
        "-kernel", os.fspath(kernel), "-append", PROBE_APPEND,
    ]  # fmt: skip


def probe_saw_guest(serial_text: str) -> bool:
    """True when the probe's console shows a kernel running."""
    return PROBE_SIGN in serial_text


def decide_accel(requested: AccelRequest, probe: KvmProbe | None) -> Accel:
    """TCG unless KVM is asked for, or (auto) a KVM guest was seen running here."""
    if requested != "auto":
        return requested
    return "kvm" if probe is not None and probe.runs else "tcg"


def mosquitto_sub_argv(
    host: str,
    port: int,
    topic: str,
    *,
    count: int = 1,
    wait_s: int | None = None,
    username: str | None = None,
    password: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """mosquitto_sub printing `topic payload` lines; -W stops it after wait_s seconds."""
    argv = ["mosquitto_sub", "-h", host, "-p", str(port), "-q", "1", "-t", topic, "-v"]
    argv += ["-C", str(count)]
    if wait_s is not None:
        argv += ["-W", str(max(1, wait_s))]
    if username is not None:
        argv += ["-u", username]
    if password is not None:
        argv += ["-P", password]
    return [*argv, *extra]
