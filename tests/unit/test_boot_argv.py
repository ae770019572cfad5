"""Argv builders of serving and booting, as golden lists; the milestone parser on real output."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from controller.config.load import parse_config
from controller.core.errors import ConfigError, NetrootError
from controller.render import boot_target
from controller.serve import dhcp, httpboot, loaders, nbd, nfs
from controller.vm import guest, qemu
from controller.vm.milestones import Watcher
from controller.vm.servers import console_socket

V1 = "20260101T120000.000Z-1a2b3c4d"
RUN = Path("/run/nb")


def vm(**fields: Any) -> qemu.VmSpec:
    base: dict[str, Any] = {
        "name": "netroot-debian12",
        "mac": "52:54:00:12:34:56",
        "serial_log": RUN / "serial.log",
        "console_socket": RUN / "console.sock",
        "pid_file": RUN / "qemu.pid",
        "forwards": (
            qemu.Forward(2049, "127.0.0.1", 20490),
            qemu.Forward(1883, "127.0.0.1", 18830),
        ),
        "tftp_root": RUN / "tftp",
    }
    return qemu.VmSpec(**{**base, **fields})


COMMON = [
    "-m", "1024", "-smp", "1", "-display", "none", "-monitor", "none", "-no-reboot",
    "-pidfile", "/run/nb/qemu.pid",
    "-chardev",
    "socket,id=s0,path=/run/nb/console.sock,server=on,wait=off,logfile=/run/nb/serial.log",
    "-serial", "chardev:s0",
]  # fmt: skip
NETDEV = (
    "user,id=n0,restrict=on,tftp=/run/nb/tftp,bootfile=pxelinux.0,"
    "hostfwd=tcp:127.0.0.1:2222-:22,"
    "guestfwd=tcp:10.0.2.100:2049-cmd:socat - TCP:127.0.0.1:20490,"
    "guestfwd=tcp:10.0.2.100:1883-cmd:socat - TCP:127.0.0.1:18830"
)


def test_a_vm_that_may_reboot_boots_again_instead_of_exiting() -> None:
    # `netroot boot --reboot`: the guest's reset is a new PXE boot (a canary rollout's reboot)
    argv = qemu.qemu_argv(vm(reboot=True))
    assert "-no-reboot" not in argv
    assert argv == [a for a in qemu.qemu_argv(vm()) if a != "-no-reboot"]


def test_qemu_pxe_bios_golden() -> None:
    assert qemu.qemu_argv(vm()) == [
        "qemu-system-x86_64", "-name", "netroot-debian12", "-accel", "tcg", *COMMON,
        "-netdev", NETDEV,
        "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56",
        "-boot", "n",
    ]  # fmt: skip


def test_qemu_uefi_kvm_no_ssh_extra_args() -> None:
    argv = qemu.qemu_argv(
        vm(
            accel="kvm",
            ssh_port=None,
            bootfile="grub/grubx64.efi",
            uefi_vars=RUN / "vars.fd",
            extra=("-smp", "2"),
        )
    )
    assert argv[:6] == ["qemu-system-x86_64", "-name", "netroot-debian12", "-accel", "kvm", "-cpu"]
    netdev = argv[argv.index("-netdev") + 1]
    assert "bootfile=grub/grubx64.efi" in netdev and "hostfwd" not in netdev
    assert argv[-8:] == [
        "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
        "-drive", "if=pflash,format=raw,unit=1,file=/run/nb/vars.fd",
        "-boot", "n", "-smp", "2",
    ]  # fmt: skip


def test_qemu_direct_kernel_has_no_tftp() -> None:
    direct = qemu.DirectKernel(Path("/v/boot/vmlinuz"), Path("/v/boot/initrd.img"), "root=x ro")
    argv = qemu.qemu_argv(vm(tftp_root=None, direct=direct))
    assert argv[-6:] == [
        "-kernel", "/v/boot/vmlinuz", "-initrd", "/v/boot/initrd.img", "-append", "root=x ro"
    ]  # fmt: skip
    assert "-boot" not in argv and "tftp=" not in argv[argv.index("-netdev") + 1]


def test_commas_in_paths_are_doubled_for_qemu() -> None:
    netdev = qemu.netdev_arg(vm(tftp_root=Path("/srv/a,b"), forwards=()))
    assert netdev.startswith("user,id=n0,restrict=on,tftp=/srv/a,,b,bootfile=pxelinux.0")


def test_ipv6_broker_forward_is_bracketed_for_socat() -> None:
    assert qemu.socat_target("::1", 1883) == "TCP:[::1]:1883"
    assert qemu.socat_target("127.0.0.1", 1883) == "TCP:127.0.0.1:1883"


def test_kvm_probe_boots_a_kernel_and_mosquitto_sub_golden() -> None:
    assert qemu.kvm_probe_argv(Path("/boot/vmlinuz-6.1"), RUN / "probe,1.log") == [
        "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-machine", "pc", "-nodefaults",
        "-no-user-config", "-m", "256", "-smp", "1", "-display", "none", "-monitor", "none",
        "-no-reboot", "-chardev", "file,id=s0,path=/run/nb/probe,,1.log", "-serial", "chardev:s0",
        "-kernel", "/boot/vmlinuz-6.1", "-append", "console=ttyS0 panic=-1",
    ]  # fmt: skip
    assert qemu.mosquitto_sub_argv("127.0.0.1", 1883, "netroot/node/x/report", wait_s=60) == [
        "mosquitto_sub", "-h", "127.0.0.1", "-p", "1883", "-q", "1",
        "-t", "netroot/node/x/report", "-v", "-C", "1", "-W", "60",
    ]  # fmt: skip


def test_server_argv_golden() -> None:
    assert nfs.ganesha_argv(RUN / "g.conf", RUN / "g.log", RUN / "g.pid") == [
        "ganesha.nfsd", "-F", "-f", "/run/nb/g.conf", "-L", "/run/nb/g.log",
        "-p", "/run/nb/g.pid", "-N", "NIV_EVENT",
    ]  # fmt: skip
    assert nfs.exportfs_argv() == ["exportfs", "-r"]
    assert dhcp.dnsmasq_argv(RUN / "d.conf", RUN / "d.pid", lease_file=RUN / "leases") == [
        "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
        "--conf-file=/run/nb/d.conf", "--pid-file=/run/nb/d.pid", "--log-facility=-",
        "--dhcp-leasefile=/run/nb/leases",
    ]  # fmt: skip
    assert nbd.nbd_server_argv(RUN / "nbd.conf", RUN / "nbd.pid") == [
        "nbd-server", "-C", "/run/nb/nbd.conf", "-p", "/run/nb/nbd.pid"
    ]  # fmt: skip


def test_grub_mkimage_golden() -> None:
    assert loaders.grub_mkimage_argv(RUN / "grubx64.efi") == [
        "grub-mkimage", "--format=x86_64-efi", "--directory=/usr/lib/grub/x86_64-efi",
        "--prefix=/grub", "--output=/run/nb/grubx64.efi",
        "normal", "configfile", "linux", "boot", "efinet", "net", "tftp", "gzio", "echo", "test",
        "sleep", "reboot", "halt", "ls", "cat", "efi_gop", "efi_uga", "serial", "terminal",
    ]  # fmt: skip


def test_mksquashfs_golden() -> None:
    assert nbd.mksquashfs_argv(Path("/s/rootfs"), Path("/c/v.sqfs"), processors=2) == [
        "mksquashfs", "/s/rootfs", "/c/v.sqfs", "-comp", "zstd", "-noappend", "-no-progress",
        "-xattrs", "-processors", "2",
    ]  # fmt: skip


def make_config(**overrides: Any) -> Any:
    data: dict[str, Any] = {
        "state_dir": "/var/lib/netroot",
        "server": "10.0.2.2",
        "labels": {
            "debian12": {"recipe": "debian12.toml"},
            "rwlab": {"recipe": "r.toml", "rw": True},
        },
    }
    data.update(overrides)
    return parse_config(data, source="/etc/netroot/netroot.toml", root=Path("/etc/netroot"))


def test_nbd_cmdline_and_server_config() -> None:
    target = boot_target(make_config(), "debian12", V1)
    assert nbd.nbd_cmdline(target, server="10.0.2.2") == (
        f"root=nbd:10.0.2.2:10809/debian12-{V1}:squashfs:ro ro rd.neednet=1 ip=dhcp rootovl"
        f" netroot.label=debian12 netroot.version={V1} netroot.mqtt=10.0.2.2:1883"
    )
    text = nbd.render_nbd_server([(f"debian12-{V1}", Path("/c/v.sqfs"))], listen="127.0.0.1")
    assert text.splitlines()[1:] == [
        "[generic]", "    port = 10809", "    allowlist = true", "    listenaddr = 127.0.0.1",
        "", f"[debian12-{V1}]", "    exportname = /c/v.sqfs", "    readonly = true",
    ]  # fmt: skip
    with pytest.raises(NetrootError, match="read-only"):
        nbd.nbd_cmdline(boot_target(make_config(), "rwlab", V1), server="10.0.2.2")


def test_dhcp_hook_wrapper_is_one_exec_line() -> None:
    text = dhcp.hook_wrapper(make_config(), python="/usr/bin/python3")
    lines = text.splitlines()
    assert lines[0] == "#!/bin/sh" and len(lines) == 3
    assert lines[2].endswith(
        ' exec /usr/bin/python3 -m controller --config /etc/netroot/netroot.toml hook dhcp "$@"'
    )


def test_dhcp_config_error_names_the_field() -> None:
    config = make_config(dhcp={"enabled": True, "mode": "full", "network": "10.0.2.0/24"})
    with pytest.raises(ConfigError, match=r"dhcp: invalid range .*range_start and range_end"):
        dhcp.dnsmasq_spec(config)
    config = make_config(dhcp={"mode": "proxy", "network": "10.9.0.0/16"})
    with pytest.raises(ConfigError, match=r"server.*an address in 10\.9\.0\.0/16"):
        dhcp.dnsmasq_spec(config)


# A BIOS PXE boot as this machine's qemu prints it (trimmed), and a UEFI one.
BIOS_CONSOLE = """\
PXELINUX 6.04 PXE 20200816 Copyright (C) 1994-2015 H. Peter Anvin et al
Loading netroot/_versions/debian12/V/vmlinuz... ok
Loading netroot/_versions/debian12/V/initrd.img...ok
[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) (gcc-12)
\x1b[0;32m  OK  \x1b[0m] Reached target \x1b[0;1;39minitrd-root…get\x1b[0m - Initrd Root \
File System.
Welcome to \x1b[1mDebian GNU/Linux 12 (bookworm) dracut-059-4 (Initramfs)\x1b[0m!
\r
Welcome to \x1b[1mDebian GNU/Linux 12 (bookworm)\x1b[0m!
netroot-agent: boot report published: label debian12 version V mac 52:54:00:12:34:56 \
to 10.0.2.100:1883
localhost login: [  174.307382] ACPI: bus type drm_connector registered
"""


def test_milestones_from_a_bios_console_in_order() -> None:
    watcher = Watcher()
    hits = []
    for i, chunk in enumerate([BIOS_CONSOLE[:70], BIOS_CONSOLE[70:300], BIOS_CONSOLE[300:]]):
        hits += watcher.feed_text(chunk, float(i))
    assert [h.name for h in hits] == [
        "pxe", "boot-files", "kernel", "nfs-root", "switch-root", "agent", "login"
    ]  # fmt: skip
    assert hits[2].text == "kernel 6.1.0-56-amd64 started"
    assert hits[4].text == "switched to the real root (Debian GNU/Linux 12 (bookworm))"
    assert watcher.last() == "login"
    assert watcher.feed_line("PXELINUX 6.04 again", 9.0) == []  # each milestone once
    assert watcher.mark("report", "broker got it", 10.0) is not None
    assert watcher.mark("report", "again", 11.0) is None


def test_failures_are_reported_every_time() -> None:
    watcher = Watcher()
    hits = watcher.feed_line("[   9.1] Kernel panic - not syncing: VFS: Unable to mount root", 1.0)
    assert hits[0].failure and hits[0].text.startswith("Kernel panic")
    assert watcher.feed_line("Kernel panic - not syncing: again", 2.0)[0].failure
    assert watcher.last() == "none"


def test_uefi_loaders_count_as_the_loader_and_grub_is_not_the_real_root() -> None:
    hits = Watcher().feed_line("  NBP file downloaded successfully.", 3.0)
    assert [h.name for h in hits] == ["pxe"]
    watcher = Watcher()
    hits = watcher.feed_text("iPXE 1.0.0+git-20190125 -- Open Source\nWelcome to GRUB!\n", 1.0)
    assert [h.name for h in hits] == ["pxe"]
    assert watcher.feed_line("[    0.000000] Linux version 6.1.0-56-amd64 (x)", 2.0)
    assert [h.name for h in watcher.feed_line("Welcome to Debian GNU/Linux 12!", 3.0)] == [
        "switch-root"
    ]


def test_netroot_boot_over_http_runs_the_ipxe_script_and_forwards_port_80(tmp_path: Path) -> None:
    config = make_config()
    options = guest.BootOptions(label="debian12", ssh_port=None)
    assert options.over_http and guest.bootfile(options) == "ipxe/boot.ipxe"
    spec = guest.vm_spec(config, options, guest.vm_target(config, "debian12", V1, http=True),
                         tmp_path, mac="52:54:00:00:00:01", nfs_port=2049, accel="tcg",
                         http_port=41000)  # fmt: skip
    netdev = qemu.netdev_arg(spec)
    assert "bootfile=ipxe/boot.ipxe" in netdev
    assert "guestfwd=tcp:10.0.2.100:80-cmd:socat - TCP:127.0.0.1:41000" in netdev
    assert "restrict=on" in netdev
    target = guest.vm_target(config, "debian12", V1, http=True)
    assert target.http_port == 80  # iPXE: http://10.0.2.100:80/boot/debian12/V1/...
    tftp = guest.BootOptions(label="debian12", boot_files="tftp")
    uefi = guest.BootOptions(label="debian12", uefi=True)
    assert (guest.bootfile(tftp), tftp.over_http) == ("pxelinux.0", False)
    assert (guest.bootfile(uefi), uefi.over_http) == ("grub/grubx64.efi", False)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=10-", (10, 99)),
        ("bytes=-5", (95, 99)),
        ("bytes=90-500", (90, 99)),
        ("bytes=100-", "unsatisfiable"),
        ("bytes=-0", "unsatisfiable"),
        ("bytes=9-3", "unsatisfiable"),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=a-b", None),
        ("bytes=", None),
    ],
)
def test_byte_ranges(header: str, expected: object) -> None:
    assert httpboot.parse_range(header, 100) == expected


def test_the_console_socket_fits_a_unix_socket_address_whatever_the_state_dir() -> None:
    short = Path("/var/lib/netroot/run/boot/debian12-20261204T214304-13299")
    assert console_socket(short) == short / "console.sock"
    deep = Path("/srv/" + "a-rather-long-directory-name/" * 5) / "run/boot/debian12-1-2"
    path = console_socket(deep)
    # sockaddr_un holds 108 bytes with the NUL: qemu refuses a longer path
    assert len(os.fsencode(path)) <= 107 and path.name == "console.sock"
    assert console_socket(deep) == path != console_socket(deep.with_name("debian12-1-3"))
