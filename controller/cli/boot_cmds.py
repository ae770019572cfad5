"""install, boot, render: serving a label and booting it in qemu (docs/design.md §15)."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic.dataclasses import dataclass

from controller.cli.options import OPTIONS, Common, add_commands, command, flag, load, opt, pos
from controller.cli.output import emit_json
from controller.cli.store_cmds import LabelOptions
from controller.config.models import Config
from controller.core import proc
from controller.core.errors import NetrootError
from controller.core.ids import check_label, normalize_mac
from controller.recipes import load_recipe
from controller.render import (
    boot_target,
    export_specs,
    render_dnsmasq,
    render_exports,
    render_grub,
    render_ipxe,
    render_pxelinux,
)
from controller.render.grub import GRUB_DEFAULT
from controller.render.ipxe import IPXE_DEFAULT
from controller.render.pxelinux import PXELINUX_DEFAULT
from controller.serve import dhcp, nbd, nfs, tftp
from controller.serve.loaders import install_loaders
from controller.store import versions as store
from controller.store.layout import label_paths
from controller.vm import guest
from controller.vm.boot import run_boot, serial_log_hint
from controller.vm.console import interactive
from controller.vm.milestones import STALL_SECONDS, Hit
from controller.vm.qemu import BOOT_FILES, AccelRequest, BootFiles
from controller.vm.servers import broker_listens

RenderKind = Literal["pxelinux", "ipxe", "grub", "exports", "ganesha", "dnsmasq", "nbd"]
KINDS = get_args(RenderKind)


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class BootCmdOptions(Common):
    """netroot boot."""

    label: str = pos()
    headless: bool = flag("no console: milestones only")
    timeout: float | None = opt(type=float, metavar="S", help="stop the VM after S seconds")
    uefi: bool = flag("UEFI firmware (OVMF) and GRUB")
    direct: bool = flag("boot the kernel directly (no firmware PXE)")
    ssh_port: int = opt(
        type=int,
        default=2222,
        metavar="PORT",
        help="host loopback port forwarded to the guest's ssh (0: none; default 2222)",
    )
    ssh_key: str | None = opt(
        metavar="FILE",
        help="public key root accepts on this VM"
        " (default: the first ~/.ssh/id_*.pub, else a throw-away pair in state_dir/ssh)",
    )
    mac: str | None = opt(help="the VM's MAC address (default: random 52:54:00:xx:xx:xx)")
    memory: int = opt(type=int, default=1024, metavar="MB")
    accel: AccelRequest = opt(
        choices=get_args(AccelRequest),
        default="auto",
        help="auto (default): KVM only once a KVM guest was seen running here"
        " (probed once per host boot), else TCG; a KVM guest showing no"
        " milestone is booted again under TCG. kvm: KVM, no fall-back",
    )
    boot_files: BootFiles = opt(
        choices=BOOT_FILES,
        default="http",
        help="http (default): qemu's iPXE runs the label's iPXE script and loads kernel and"
        " initramfs over HTTP; tftp: pxelinux loads them over TFTP",
    )
    stop_after_report: bool = flag("stop the VM once the agent's report arrived")
    reboot: bool = flag(
        "a guest reboot boots again through the menus then served (an activation's, a canary"
        " rollout's) instead of stopping the VM"
    )
    stall: float | None = opt(
        type=float,
        metavar="S",
        help="stop a VM that shows no new boot milestone for S seconds"
        f" (default {STALL_SECONDS['tcg']:.0f} under TCG,"
        f" {STALL_SECONDS['kvm']:.0f} under KVM; 0: never)",
    )


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class RenderOptions(Common):
    """netroot render."""

    kind: RenderKind = pos(choices=KINDS)
    label: str | None = pos(nargs="?", help="the menu that boots this label; its exports only")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the serving and booting commands."""
    add_commands(sub, common, cmd_install, cmd_boot, cmd_render)


def _check_label(config: Config, label: str) -> None:
    """A label to serve: configured, its recipe readable, an active version with boot files."""
    check_label(label)
    config.label(label)
    load_recipe(config.recipe_path(label))
    paths = label_paths(config, label)
    version = store.active_version(paths)
    if version is None:
        raise NetrootError(f"{label}: no active version; run `netroot build {label} --activate`")
    tftp.check_boot_files(paths, version)


@command(
    "install",
    LabelOptions,
    help="boot loaders and the label's boot files into its TFTP root; make it the default",
)
def cmd_install(opts: LabelOptions) -> int:
    """The original installnfs: loaders, menus (this label the default), exports, dnsmasq."""
    config = load(opts)
    _check_label(config, opts.label)
    tftp_root = config.label_tftp_root(opts.label)
    dnsmasq_text = dhcp.render_config(config) if config.dhcp.enabled else None
    with tftp.tftp_lock(tftp_root):
        # Everything is rendered and checked before the first write.
        plan = tftp.plan_tftp_root(config, tftp_root, default=opts.label)
        loaders = install_loaders(tftp_root)
        tftp.set_default_choice(tftp_root, opts.label)
        written = tftp.write_plan(tftp_root, plan)
    applied = nfs.apply(config)
    dhcp_files = dhcp.write_files(config) if dnsmasq_text is not None else None
    notes = [*plan.skipped, *applied.notes]
    result = {
        "label": opts.label,
        "tftp_root": str(tftp_root),
        "default": plan.default,
        "loaders": loaders.installed,
        "missing_loaders": loaders.missing,
        "written": written.written,
        "removed": written.removed,
        "nfs_written": applied.written,
        "nfs_reloaded": applied.reloaded,
        "notes": notes,
        "dnsmasq": str(dhcp_files.config_file) if dhcp_files else None,
    }
    if opts.json:
        emit_json(result)
        return 0
    print(f"installed {opts.label} into {tftp_root} (default label: {plan.default})")
    print(f"  loaders: {', '.join(loaders.installed) or 'none'}")
    for missing in loaders.missing:
        print(f"  not installed: {missing}")
    print(f"  boot files written: {len(written.written)}, stale removed: {len(written.removed)}")
    for path in applied.written:
        print(f"  NFS: wrote {path}")
    for what in applied.reloaded:
        print(f"  NFS: reloaded {what}")
    if dhcp_files:
        print(f"  dnsmasq: wrote {dhcp_files.config_file} (hook {dhcp_files.hook})")
    for note in notes:
        print(f"  note: {note}")
    return 0


def _print_hit(opts: BootCmdOptions, console: bool, hit: Hit) -> None:
    if opts.json:
        line = {"at": round(hit.at, 1), "milestone": hit.name, "text": hit.text}
        print(json.dumps(line), flush=True)
        return
    stream = sys.stdout if opts.headless else sys.stderr
    # an attached console puts the terminal in raw mode: no implicit carriage return
    end = "\r\n" if console else "\n"
    print(f"[{hit.at:6.1f}s] {hit.name}: {hit.text}", file=stream, flush=True, end=end)


def _check_broker(config: Config, opts: BootCmdOptions) -> None:
    """Say at once when no broker listens where the agent will report (the VM's MQTT is
    forwarded to [mqtt] host:port): the report could never come."""
    mqtt = config.mqtt
    if not mqtt.enabled or broker_listens(mqtt.host, mqtt.port):
        return
    where = f"{mqtt.host}:{mqtt.port} ([mqtt] of {config.source})"
    if opts.stop_after_report:
        raise NetrootError(
            f"no MQTT broker answers on {where}: the agent's report could never arrive; "
            f"start one (`mosquitto -p {mqtt.port}`, or `netroot up`) or drop --stop-after-report"
        )
    _say(f"no MQTT broker answers on {where}: the VM boots, but the agent's report cannot "
         "arrive (milestones come from the console only)")  # fmt: skip


@command(
    "boot",
    BootCmdOptions,
    help="PXE-boot the label's active version in qemu",
    description="Starts NFS-Ganesha on loopback for the label's store, qemu with user "
    "networking (TFTP or iPXE over HTTP, NFS and MQTT forwarded to loopback), and prints "
    "each boot milestone as the serial console shows it; the agent's report arrives "
    "through the [mqtt] broker. KVM is used when a probe shows it works, else TCG. "
    "Everything it started stops with it (Ctrl-C, --timeout, --stop-after-report).",
)
def cmd_boot(opts: BootCmdOptions) -> int:
    """The original startnfs: Ganesha on loopback, qemu PXE, milestones as they happen."""
    config = load(opts)
    _check_label(config, opts.label)
    mac = None
    if opts.mac:
        try:
            mac = normalize_mac(opts.mac)
        except ValueError as exc:
            raise NetrootError(f"--mac: {exc}") from None
    if opts.timeout is not None and opts.timeout <= 0:
        raise NetrootError("--timeout: must be a positive number of seconds")
    if opts.stall is not None and opts.stall < 0:
        raise NetrootError("--stall: must be 0 (no bound) or a positive number of seconds")
    _check_broker(config, opts)
    console = not opts.headless and not opts.json and interactive()
    public, private = _ssh_key(config, opts.ssh_key) if opts.ssh_port else ("", None)
    options = guest.BootOptions(
        label=opts.label,
        headless=opts.headless,
        console=console,
        timeout=opts.timeout,
        uefi=opts.uefi,
        direct=opts.direct,
        ssh_port=opts.ssh_port or None,
        mac=mac,
        memory_mb=opts.memory,
        accel=opts.accel,
        stop_after_report=opts.stop_after_report,
        boot_files=opts.boot_files,
        stall=opts.stall,
        ssh_key=public or None,
        reboot=opts.reboot,
    )
    login = (f"ssh -p {opts.ssh_port} -i {shlex.quote(str(private))} -o StrictHostKeyChecking=no"
             " -o UserKnownHostsFile=/dev/null root@localhost") if private else ""  # fmt: skip
    if opts.json and login:
        print(json.dumps({"ssh": login}), flush=True)
    if not opts.json:
        where = f", {login}" if login else ""
        stop_key = "Ctrl-] stops it" if console else "Ctrl-C stops it"
        print(f"booting {opts.label} in qemu ({stop_key}{where})", file=sys.stderr)
    outcome = asyncio.run(
        run_boot(config, options, lambda hit: _print_hit(opts, console, hit), _say)
    )
    summary = {
        "label": outcome.label,
        "version": outcome.version,
        "mac": outcome.mac,
        "booted": outcome.booted,
        "ended": outcome.ended,
        "milestones": {h.name: round(h.at, 1) for h in outcome.hits if not h.failure},
        "report": outcome.report.model_dump(mode="json") if outcome.report else None,
        "serial_log": serial_log_hint(outcome),
        "accel": outcome.accel,
        "console_tail": outcome.console_tail,
    }
    if opts.json:
        print(json.dumps({"result": summary}), flush=True)
    else:
        under = f" under {outcome.accel.upper()}" if outcome.accel else ""
        print(
            f"{outcome.label} {outcome.version} mac {outcome.mac}{under}: {outcome.ended};"
            f" console log {summary['serial_log']}",
            file=sys.stderr,
        )
    if outcome.booted:
        return 0
    failures = [h.text for h in outcome.hits if h.failure]
    reached = [h.name for h in outcome.hits if not h.failure]
    why = f"; {failures[0]}" if failures else ""
    tail = "".join(f"\n  | {line}" for line in outcome.console_tail)
    shown = f"\nlast console lines:{tail}" if tail else ""
    raise NetrootError(
        f"{opts.label} did not finish booting ({outcome.ended}; last milestone:"
        f" {reached[-1] if reached else 'none'}{why}); console log {summary['serial_log']}"
        f"{shown}"
    )


def _ssh_key(config: Config, given: str | None) -> tuple[str, Path | None]:
    """(public key line, private key file) for the VM: --ssh-key, the first
    ~/.ssh/id_*.pub, or a throw-away pair made once under state_dir/ssh."""
    if given:
        path = Path(given)
        public = path if path.suffix == ".pub" else path.with_name(path.name + ".pub")
    else:
        found = sorted((Path.home() / ".ssh").glob("id_*.pub"))
        public = found[0] if found else config.state_dir / "ssh" / "netroot-vm-key.pub"
        if not found and not public.exists():
            public.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            proc.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "netroot boot",
                      "-f", public.with_suffix("")])  # fmt: skip
    try:
        text = public.read_text()
    except OSError as exc:
        raise NetrootError(f"--ssh-key: cannot read {public}: {exc.strerror}") from None
    guest.ssh_key_word(text, str(public))
    private = public.with_suffix("")
    return text.strip(), private if private.exists() else None


def _say(message: str) -> None:
    print(f"netroot boot: {message}", file=sys.stderr, flush=True)


def _menu(config: Config, kind: str, label: str | None) -> str:
    tftp_root = config.label_tftp_root(label) if label else config.tftp_root
    if label is None:
        plan = tftp.plan_tftp_root(config, tftp_root)
        name = {"pxelinux": PXELINUX_DEFAULT, "ipxe": IPXE_DEFAULT, "grub": GRUB_DEFAULT}[kind]
        return plan.files[name]
    check_label(label)
    version = store.active_version(label_paths(config, label))
    target = boot_target(config, label, version)
    targets = [
        boot_target(config, other, active)
        for other in tftp.served_labels(config, tftp_root)
        if other != label and (active := store.active_version(label_paths(config, other)))
    ] + [target]
    if kind == "pxelinux":
        return render_pxelinux(targets, label)
    if kind == "grub":
        return render_grub(targets, label)
    return render_ipxe(target)


@command(
    "render",
    RenderOptions,
    help="print a rendered file",
    description="Prints what netroot would write, without writing it: a boot menu "
    "(pxelinux, iPXE, GRUB), the NFS exports or Ganesha config, the dnsmasq config.",
)
def cmd_render(opts: RenderOptions) -> int:
    """Print one rendered file; nothing is written."""
    config = load(opts)
    label = opts.label
    if label is not None:
        check_label(label)
        config.label(label)
    if opts.kind in ("pxelinux", "ipxe", "grub"):
        text = _menu(config, opts.kind, label)
    elif opts.kind == "exports":
        labels = [label] if label else nfs.active_labels(config)
        specs = export_specs(config, labels)
        text = render_exports(specs, clients=config.nfs.clients, insecure=config.nfs.insecure)
    elif opts.kind == "ganesha":
        text = nfs.render_system_ganesha(config, [label] if label else None)
    elif opts.kind == "dnsmasq":
        spec = dhcp.dnsmasq_spec(config, tftp_root=config.label_tftp_root(label) if label else None)
        text = render_dnsmasq(spec)
    else:
        if label is None:
            raise NetrootError("render nbd: name the label")
        text = nbd.render_label_server(config, label)
    sys.stdout.write(text)
    return 0
