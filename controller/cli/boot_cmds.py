"""install, boot, render: serving a label and booting it in qemu (DESIGN.md section 8)."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from controller.cli.output import emit_json
from controller.config.models import Config, load_config
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
from controller.serve import bootfiles, dhcp, nbd, nfs
from controller.store import versions as store
from controller.store.layout import label_paths
from controller.vm import boot as bootvm
from controller.vm import console as bootvm_console
from controller.vm.milestones import STALL_SECONDS, Hit

KINDS = ("pxelinux", "ipxe", "grub", "exports", "ganesha", "dnsmasq", "nbd")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the serving and booting commands."""
    p = sub.add_parser(
        "install",
        parents=[common],
        help="boot loaders and the label's boot files into its TFTP root; make it the default",
    )
    p.add_argument("label")
    p.set_defaults(handler=cmd_install)

    p = sub.add_parser("boot", parents=[common], help="PXE-boot the label's active version in qemu")
    p.add_argument("label")
    p.add_argument("--headless", action="store_true", help="no console: milestones only")
    p.add_argument("--timeout", type=float, metavar="S", help="stop the VM after S seconds")
    p.add_argument("--uefi", action="store_true", help="UEFI firmware (OVMF) and GRUB")
    p.add_argument(
        "--direct", action="store_true", help="boot the kernel directly (no firmware PXE)"
    )
    p.add_argument(
        "--ssh-port", type=int, default=2222, metavar="PORT",
        help="host loopback port forwarded to the guest's ssh (0: none; default 2222)",
    )  # fmt: skip
    p.add_argument("--ssh-key", metavar="FILE", help="public key root accepts on this VM"
                   " (default: the first ~/.ssh/id_*.pub, else a throw-away pair in state_dir/ssh)",
                   )  # fmt: skip
    p.add_argument("--mac", help="the VM's MAC address (default: random 52:54:00:xx:xx:xx)")
    p.add_argument("--memory", type=int, default=1024, metavar="MB")
    p.add_argument(
        "--accel",
        choices=("auto", "tcg", "kvm"),
        default="auto",
        help="auto (default): KVM only once a KVM guest was seen running here"
        " (probed once per host boot), else TCG; a KVM guest showing no"
        " milestone is booted again under TCG. kvm: KVM, no fall-back",
    )
    p.add_argument(
        "--stop-after-report",
        action="store_true",
        help="stop the VM once the agent's report arrived",
    )
    p.add_argument(
        "--stall",
        type=float,
        metavar="S",
        help="stop a VM that shows no new boot milestone for S seconds"
        f" (default {STALL_SECONDS['tcg']:.0f} under TCG,"
        f" {STALL_SECONDS['kvm']:.0f} under KVM; 0: never)",
    )
    p.set_defaults(handler=cmd_boot)

    p = sub.add_parser("render", parents=[common], help="print a rendered file")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("label", nargs="?", help="the menu that boots this label; its exports only")
    p.set_defaults(handler=cmd_render)


def _config(args: argparse.Namespace) -> Config:
    return load_config(Path(args.config) if args.config else None)


def _check_label(config: Config, label: str) -> None:
    """A label to serve: configured, its recipe readable, an active version with boot files."""
    check_label(label)
    config.label(label)
    load_recipe(config.recipe_path(label))
    paths = label_paths(config, label)
    version = store.active_version(paths)
    if version is None:
        raise NetrootError(f"{label}: no active version; run `netroot build {label} --activate`")
    bootfiles.check_boot_files(paths, version)


def cmd_install(args: argparse.Namespace) -> int:
    """The original installnfs: loaders, menus (this label the default), exports, dnsmasq."""
    config = _config(args)
    _check_label(config, args.label)
    tftp_root = config.label_tftp_root(args.label)
    dnsmasq_text = dhcp.render_config(config) if config.dhcp.enabled else None
    with bootfiles.tftp_lock(tftp_root):
        # Everything is rendered and checked before the first write.
        plan = bootfiles.plan_tftp_root(config, tftp_root, default=args.label)
        loaders = bootfiles.install_loaders(tftp_root)
        bootfiles.set_default_choice(tftp_root, args.label)
        written = bootfiles.write_plan(tftp_root, plan)
    applied = nfs.apply(config)
    dhcp_files = dhcp.write_files(config) if dnsmasq_text is not None else None
    result = {
        "label": args.label,
        "tftp_root": str(tftp_root),
        "default": plan.default,
        "loaders": loaders.installed,
        "missing_loaders": loaders.missing,
        "written": written.written,
        "removed": written.removed,
        "nfs_written": applied.written,
        "nfs_reloaded": applied.reloaded,
        "notes": [*plan.skipped, *applied.notes],
        "dnsmasq": str(dhcp_files.config_file) if dhcp_files else None,
    }
    if args.json:
        emit_json(result)
        return 0
    print(f"installed {args.label} into {tftp_root} (default label: {plan.default})")
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
    for note in result["notes"]:
        print(f"  note: {note}")
    return 0


def _print_hit(args: argparse.Namespace, hit: Hit) -> None:
    if args.json:
        line = {"at": round(hit.at, 1), "milestone": hit.name, "text": hit.text}
        print(json.dumps(line), flush=True)
        return
    stream = sys.stdout if args.headless else sys.stderr
    # an attached console puts the terminal in raw mode: no implicit carriage return
    end = "\r\n" if args.console else "\n"
    print(f"[{hit.at:6.1f}s] {hit.name}: {hit.text}", file=stream, flush=True, end=end)


def cmd_boot(args: argparse.Namespace) -> int:
    """The original startnfs: Ganesha on loopback, qemu PXE, milestones as they happen."""
    config = _config(args)
    _check_label(config, args.label)
    mac = None
    if args.mac:
        try:
            mac = normalize_mac(args.mac)
        except ValueError as exc:
            raise NetrootError(f"--mac: {exc}") from None
    if args.timeout is not None and args.timeout <= 0:
        raise NetrootError("--timeout: must be a positive number of seconds")
    if args.stall is not None and args.stall < 0:
        raise NetrootError("--stall: must be 0 (no bound) or a positive number of seconds")
    args.console = not args.headless and not args.json and bootvm_console.interactive()
    public, private = _ssh_key(config, args.ssh_key) if args.ssh_port else ("", None)
    options = bootvm.BootOptions(
        label=args.label,
        headless=args.headless,
        console=args.console,
        timeout=args.timeout,
        uefi=args.uefi,
        direct=args.direct,
        ssh_port=args.ssh_port or None,
        mac=mac,
        memory_mb=args.memory,
        accel=args.accel,
        stop_after_report=args.stop_after_report,
        stall=args.stall,
        ssh_key=public or None,
    )
    login = (f"ssh -p {args.ssh_port} -i {shlex.quote(str(private))} -o StrictHostKeyChecking=no"
             " -o UserKnownHostsFile=/dev/null root@localhost") if private else ""  # fmt: skip
    if args.json and login:
        print(json.dumps({"ssh": login}), flush=True)
    if not args.json:
        where = f", {login}" if login else ""
        stop_key = "Ctrl-] stops it" if args.console else "Ctrl-C stops it"
        print(f"booting {args.label} in qemu ({stop_key}{where})", file=sys.stderr)
    outcome = asyncio.run(bootvm.run_boot(config, options, lambda hit: _print_hit(args, hit), _say))
    summary = {
        "label": outcome.label,
        "version": outcome.version,
        "mac": outcome.mac,
        "booted": outcome.booted,
        "ended": outcome.ended,
        "milestones": {h.name: round(h.at, 1) for h in outcome.hits if not h.failure},
        "report": outcome.report.model_dump(mode="json") if outcome.report else None,
        "serial_log": bootvm.serial_log_hint(outcome),
        "accel": outcome.accel,
        "console_tail": outcome.console_tail,
    }
    if args.json:
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
        f"{args.label} did not finish booting ({outcome.ended}; last milestone:"
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
    bootvm.ssh_key_word(text, str(public))
    private = public.with_suffix("")
    return text.strip(), private if private.exists() else None


def _say(message: str) -> None:
    print(f"netroot boot: {message}", file=sys.stderr, flush=True)


def _menu(config: Config, kind: str, label: str | None) -> str:
    tftp_root = config.label_tftp_root(label) if label else config.tftp_root
    if label is None:
        plan = bootfiles.plan_tftp_root(config, tftp_root)
        name = {"pxelinux": PXELINUX_DEFAULT, "ipxe": IPXE_DEFAULT, "grub": GRUB_DEFAULT}[kind]
        return plan.files[name]
    check_label(label)
    version = store.active_version(label_paths(config, label))
    target = boot_target(config, label, version)
    targets = [
        boot_target(config, other, active)
        for other in bootfiles.served_labels(config, tftp_root)
        if other != label and (active := store.active_version(label_paths(config, other)))
    ] + [target]
    if kind == "pxelinux":
        return render_pxelinux(targets, label)
    if kind == "grub":
        return render_grub(targets, label)
    return render_ipxe(target)


def cmd_render(args: argparse.Namespace) -> int:
    """Print one rendered file; nothing is written."""
    config = _config(args)
    label = args.label
    if label is not None:
        check_label(label)
        config.label(label)
    if args.kind in ("pxelinux", "ipxe", "grub"):
        text = _menu(config, args.kind, label)
    elif args.kind == "exports":
        labels = [label] if label else nfs.active_labels(config)
        specs = export_specs(config, labels)
        text = render_exports(specs, clients=config.nfs.clients, insecure=config.nfs.insecure)
    elif args.kind == "ganesha":
        text = nfs.render_system_ganesha(config, [label] if label else None)
    elif args.kind == "dnsmasq":
        spec = dhcp.dnsmasq_spec(config, tftp_root=config.label_tftp_root(label) if label else None)
        text = render_dnsmasq(spec)
    else:
        if label is None:
            raise NetrootError("render nbd: name the label")
        text = nbd.render_label_server(config, label)
    sys.stdout.write(text)
    return 0
