"""`netroot boot`: PXE-boot a label's active version in qemu, as the original's startnfs.

NFS-Ganesha serves every version of the label on a free loopback port; qemu
boots over user-mode networking with `restrict=on`, its built-in TFTP
serving a private TFTP root rendered for the guest's view of the world (NFS
and MQTT at GUEST_SERVER, forwarded to loopback). Milestones are reported
as the serial console shows them, the agent's report as the broker
receives it. Everything started is stopped on exit, Ctrl-C, SIGTERM or
timeout (each server is a task whose cancellation kills and reaps it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from controller import bootfiles, bootvm_console, events, proc, store
from controller.bootvm_milestones import Hit, Watcher
from controller.bootvm_servers import Background, lab_ganesha, new_run_dir
from controller.config import Config
from controller.errors import NetrootError
from controller.layout import label_paths
from controller.qemu import (
    GUEST_MQTT_PORT,
    GUEST_NFS_PORT,
    GUEST_SERVER,
    OVMF_CODE,
    OVMF_VARS,
    DirectKernel,
    Forward,
    VmSpec,
    choose_accel,
    mosquitto_sub_argv,
    qemu_argv,
)
from controller.render import BootTarget, boot_target, kernel_cmdline
from controller.render.cmdline import INITRD_NAME, KERNEL_NAME

CONSOLE_ARG = "console=ttyS0,115200"
GRUB_BOOTFILE = bootfiles.GRUB_IMAGE


@dataclass(frozen=True)
class BootOptions:
    """What `netroot boot` was asked for."""

    label: str
    headless: bool = False
    console: bool = False  # join this terminal to the VM's console (bootvm_console)
    timeout: float | None = None
    uefi: bool = False
    direct: bool = False
    ssh_port: int | None = 2222
    mac: str | None = None
    memory_mb: int = 1024
    accel: Literal["auto", "tcg", "kvm"] = "auto"
    stop_after_report: bool = False


@dataclass
class BootOutcome:
    """How the boot went."""

    label: str
    version: str
    mac: str
    hits: list[Hit] = field(default_factory=list)
    report: events.NodeReport | None = None
    ended: str = ""  # why the VM was stopped
    serial_log: Path | None = None

    @property
    def booted(self) -> bool:
        """The agent reported (or, without a broker, a login prompt appeared)."""
        return self.report is not None or any(h.name in ("agent", "login") for h in self.hits)


Emit = Callable[[Hit], None]


def random_mac() -> str:
    """A locally administered unicast MAC in qemu's 52:54:00 range."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def vm_target(config: Config, label: str, version: str) -> BootTarget:
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
    return target.model_copy(update={"extra_cmdline": extra})


def prepare_tftp(config: Config, target: BootTarget, tftp_root: Path, *, uefi: bool) -> None:
    """The private TFTP root: loaders, this label's menus and its version links."""
    report = bootfiles.install_loaders(tftp_root, grub=uefi)
    needed = [GRUB_BOOTFILE] if uefi else ["pxelinux.0", "ldlinux.c32"]
    missing = [name for name in needed if name not in report.installed]
    if missing:
        raise NetrootError(
            f"boot loader files missing: {', '.join(missing)} ({'; '.join(report.missing)})"
        )
    links = bootfiles.version_links(config, [target.label])
    plan = bootfiles.plan_boot([target], links, default=target.label, macs={})
    bootfiles.write_plan(tftp_root, plan)


def _vm_spec(
    config: Config, options: BootOptions, target: BootTarget, run_dir: Path, *, mac: str,
    nfs_port: int
) -> VmSpec:
    forwards = [Forward(GUEST_NFS_PORT, "127.0.0.1", nfs_port)]
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
    return VmSpec(
        name=f"netroot-{options.label}",
        mac=mac,
        serial_log=run_dir / "serial.log",
        console_socket=run_dir / "console.sock",
        pid_file=run_dir / "qemu.pid",
        forwards=tuple(forwards),
        tftp_root=None if options.direct else run_dir / "tftp",
        bootfile=GRUB_BOOTFILE if options.uefi else "pxelinux.0",
        direct=direct,
        ssh_port=options.ssh_port,
        memory_mb=options.memory_mb,
        accel=choose_accel(options.accel),
        uefi_vars=uefi_vars,
        uefi_code=OVMF_CODE,
        extra=config.label(options.label).extra_qemu,
    )


def _keep_log(config: Config, run_dir: Path) -> Path | None:
    source = run_dir / "serial.log"
    if not source.exists():
        return None
    logs = config.state_dir / "logs" / "boot"
    logs.mkdir(parents=True, exist_ok=True)
    dest = logs / f"{run_dir.name}.serial.log"
    shutil.move(source, dest)
    return dest


async def run_boot(config: Config, options: BootOptions, emit: Emit) -> BootOutcome:
    """Boot the label's active version; returns when the VM stops or is stopped."""
    config.label(options.label)
    paths = label_paths(config, options.label)
    version = store.active_version(paths)
    if version is None:
        raise NetrootError(
            f"{options.label}: no active version; run `netroot build {options.label} --activate`"
        )
    bootfiles.check_boot_files(paths, version)
    if options.uefi and not OVMF_CODE.is_file():
        raise NetrootError(f"UEFI boot needs {OVMF_CODE} (Debian package ovmf)")
    target = vm_target(config, options.label, version)
    outcome = BootOutcome(options.label, version, options.mac or random_mac())
    run_dir = new_run_dir(config, options.label)
    try:
        if not options.direct:
            prepare_tftp(config, target, run_dir / "tftp", uefi=options.uefi)
        session = _Session(config, options, target, run_dir, outcome, emit)
        await session.supervise()
    finally:
        outcome.serial_log = _keep_log(config, run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
    return outcome


@dataclass
class _Session:
    """One VM and the servers and watchers around it."""

    config: Config
    options: BootOptions
    target: BootTarget
    run_dir: Path
    outcome: BootOutcome
    emit: Emit
    watcher: Watcher = field(default_factory=Watcher)
    started: float = 0.0
    reported: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, hit: Hit) -> None:
        """Keep and show a milestone."""
        self.outcome.hits.append(hit)
        self.emit(hit)

    async def supervise(self) -> None:
        """Ganesha, then qemu and the watchers, until the first reason to stop."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)  # signals only set an event
        tasks: list[asyncio.Task[None]] = []
        try:
            async with lab_ganesha(self.config, self.options.label, self.run_dir) as lab:
                spec = _vm_spec(self.config, self.options, self.target, self.run_dir,
                                mac=self.outcome.mac, nfs_port=lab.port)  # fmt: skip
                self.started = time.monotonic()
                async with Background("qemu", qemu_argv(spec)) as vm:
                    tasks.append(asyncio.create_task(self.tail_serial(spec.serial_log),
                                                     name="serial"))  # fmt: skip
                    if self.config.mqtt.enabled:
                        tasks.append(asyncio.create_task(self.watch_reports(), name="mqtt"))
                    if self.options.console:
                        attach = bootvm_console.attach(spec.console_socket, stop)
                        tasks.append(asyncio.create_task(attach, name="console"))
                    self.outcome.ended = await _until_done(vm, stop, self.reported, self.options)
                    await asyncio.sleep(0.3)  # the console's last lines
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def tail_serial(self, path: Path) -> None:
        """Milestones from the console log as it grows (shown too, unless headless or attached)."""
        offset = 0
        while True:
            chunk = b""
            with contextlib.suppress(FileNotFoundError), path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            if chunk:
                offset += len(chunk)
                text = chunk.decode(errors="replace")
                if not self.options.headless and not self.options.console:
                    sys.stdout.write(text)
                    sys.stdout.flush()
                for hit in self.watcher.feed_text(text, time.monotonic() - self.started):
                    self.record(hit)
            await asyncio.sleep(0.2)

    async def watch_reports(self) -> None:
        """The agent's boot report, as the broker hands it to a subscriber."""
        mqtt = self.config.mqtt
        topic = events.Topics(mqtt.topic_prefix).node_report(self.outcome.mac)
        password = mqtt.password_file.read_text().strip() if mqtt.password_file else None
        argv = mosquitto_sub_argv(mqtt.host, mqtt.port, topic, wait_s=60,
                                  username=mqtt.username, password=password)  # fmt: skip
        while True:
            done = await proc.arun(argv, check=False)
            for line in done.stdout.splitlines():
                self.take_report(line)
            if done.returncode not in (0, 27):  # 27: -W ran out with nothing received
                await asyncio.sleep(1)

    def take_report(self, line: str) -> None:
        """One `topic payload` line from mosquitto_sub -v."""
        topic, _, payload = line.partition(" ")
        try:
            report = events.parse_node_message(
                topic, payload.encode(), prefix=self.config.mqtt.topic_prefix
            )
        except events.NodeMessageError:
            return
        if report.kind != "boot":
            return
        self.outcome.report = report
        root = report.root
        shown = "?" if root is None else f"{root.fstype} over {root.lower or root.source}"
        text = f"broker received the agent's report: {report.label} {report.version}, / {shown}"
        hit = self.watcher.mark("report", text, time.monotonic() - self.started)
        if hit is not None:
            self.record(hit)
        self.reported.set()


async def _until_done(
    vm: Background, stop: asyncio.Event, reported: asyncio.Event, options: BootOptions
) -> str:
    if vm.task is None:
        return "the VM did not start"
    waiters: dict[asyncio.Future[Any], str] = {
        asyncio.ensure_future(stop.wait()): "stopped (signal)",
        vm.task: "the VM stopped",
    }
    if options.stop_after_report:
        waiters[asyncio.ensure_future(reported.wait())] = "the agent reported"
    try:
        done, _pending = await asyncio.wait(
            waiters, timeout=options.timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for fut in waiters:
            if fut is not vm.task and not fut.done():
                fut.cancel()
    if not done:
        return f"timeout after {options.timeout:.0f} s"
    first = next(fut for fut in waiters if fut in done)
    reason = waiters[first]
    if first is vm.task:
        reason += f" ({vm.outcome()})"
    return reason


def serial_log_hint(outcome: BootOutcome) -> str:
    """Where the console log was kept."""
    return os.fspath(outcome.serial_log) if outcome.serial_log else "(no console output)"
