"""`netroot boot`: PXE-boot a label's active version in qemu, as the original's startnfs.

NFS-Ganesha serves every version of the label on a free loopback port; qemu
boots over user-mode networking with `restrict=on`, its built-in TFTP
serving a private TFTP root rendered for the guest's view of the world (NFS
and MQTT at GUEST_SERVER, forwarded to loopback). Milestones are reported
as the serial console shows them, the agent's report as the broker
receives it. A VM that shows no new milestone for a while (bootvm_milestones
sets the bound, wider under TCG) or a fatal console line is stopped and the
console tail reported; a KVM guest chosen by `--accel auto` that shows none
at all is booted again under TCG. Everything started is stopped on exit,
Ctrl-C, SIGTERM, SIGHUP or timeout (each server is a task whose cancellation
kills and reaps it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

from controller.config.models import Config
from controller.core import proc
from controller.core.errors import NetrootError
from controller.events import node_messages as events
from controller.events.topics import Topics
from controller.render import BootTarget, boot_target, kernel_cmdline
from controller.render.cmdline import INITRD_NAME, KERNEL_NAME
from controller.serve import bootfiles, nfs
from controller.store import versions as store
from controller.store.layout import label_paths
from controller.vm import accel as bootvm_accel
from controller.vm import console as bootvm_console
from controller.vm.milestones import (
    KVM_FIRST_MILESTONE_SECONDS,
    STALL_SECONDS,
    Hit,
    Watcher,
    console_tail,
    progress_verdict,
)
from controller.vm.qemu import (
    GUEST_MQTT_PORT,
    GUEST_NFS_PORT,
    GUEST_SERVER,
    OVMF_CODE,
    OVMF_VARS,
    Accel,
    AccelRequest,
    DirectKernel,
    Forward,
    VmSpec,
    mosquitto_sub_argv,
    qemu_argv,
)
from controller.vm.servers import Background, lab_ganesha, new_run_dir

CONSOLE_ARG = "console=ttyS0,115200"
GRUB_BOOTFILE = bootfiles.GRUB_IMAGE
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, kill, a closed terminal
FATAL_GRACE_SECONDS = 2.0  # after a fatal console line: the lines that explain it
TAIL_LINES = 20
_T = TypeVar("_T")


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
    accel: AccelRequest = "auto"
    stop_after_report: bool = False
    stall: float | None = None  # seconds without a new milestone (None: by accel; 0: no bound)
    ssh_key: str | None = None  # an ssh public key line root accepts on this VM only


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
    accel: Accel | None = None  # what the last VM ran under
    console_tail: list[str] = field(default_factory=list)

    @property
    def booted(self) -> bool:
        """The agent reported (or, without a broker, a login prompt appeared)."""
        return self.report is not None or any(h.name in ("agent", "login") for h in self.hits)


Emit = Callable[[Hit], None]
Say = Callable[[str], None]


class _Stopped(Exception):
    """A stop signal arrived before the VM ran."""


FALL_BACK: Final = "fall back to TCG"


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


def vm_target(config: Config, label: str, version: str, ssh_key: str | None = None) -> BootTarget:
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
    config: Config,
    options: BootOptions,
    target: BootTarget,
    run_dir: Path,
    *,
    mac: str,
    nfs_port: int,
    accel: Accel,
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
        accel=accel,
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


def _quiet(_message: str) -> None:
    return None


async def run_boot(
    config: Config, options: BootOptions, emit: Emit, say: Say = _quiet
) -> BootOutcome:
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
    target = vm_target(config, options.label, version, options.ssh_key)
    outcome = BootOutcome(options.label, version, options.mac or random_mac())
    run_dir = new_run_dir(config, options.label)
    try:
        if not options.direct:
            prepare_tftp(config, target, run_dir / "tftp", uefi=options.uefi)
        session = _Session(config, options, target, run_dir, outcome, emit, say)
        await session.supervise()
    finally:
        text = proc.file_tail(run_dir / "serial.log", 10 * TAIL_LINES)
        outcome.console_tail = console_tail(text, TAIL_LINES)
        outcome.serial_log = _keep_log(config, run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
    return outcome


@dataclass
class _Session:
    """One VM (two, after a fall-back to TCG) and the servers and watchers around it."""

    config: Config
    options: BootOptions
    target: BootTarget
    run_dir: Path
    outcome: BootOutcome
    emit: Emit
    say: Say
    watcher: Watcher = field(default_factory=Watcher)
    started: float = 0.0
    first_started: float = 0.0  # the first VM's start: --timeout counts from it
    reported: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    fell_back: str = ""  # why the KVM guest was given up, when it ended by itself

    def record(self, hit: Hit) -> None:
        """Keep and show a milestone."""
        self.outcome.hits.append(hit)
        self.emit(hit)

    async def supervise(self) -> None:
        """Accelerator, Ganesha, then qemu and the watchers, until the first reason to stop."""
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.stop.set)  # signals only set an event
        tasks: list[asyncio.Task[None]] = []
        try:
            paths = label_paths(self.config, self.options.label)
            kernel = paths.boot(self.target.version) / KERNEL_NAME
            accel = await self._unless_stopped(bootvm_accel.choose_accel(
                self.config, self.options.accel, kernel, self.run_dir, self.say))  # fmt: skip
            async with contextlib.AsyncExitStack() as stack:
                lab = await self._unless_stopped(stack.enter_async_context(
                    lab_ganesha(self.config, self.options.label, self.run_dir)))  # fmt: skip
                if self.config.mqtt.enabled:
                    tasks.append(asyncio.create_task(self.watch_reports(), name="mqtt"))
                ended = await self.run_vm(lab, accel)
                if ended == FALL_BACK:
                    why = self.fell_back or (f"the KVM guest showed no boot milestone within"
                                             f" {KVM_FIRST_MILESTONE_SECONDS:.0f} s")  # fmt: skip
                    self.say(f"{why}: stopped it, booting again under TCG")
                    bootvm_accel.remember_kvm_hangs(self.config, why)
                    ended = await self.run_vm(lab, "tcg")
                self.outcome.ended = ended
        except _Stopped:
            self.outcome.ended = "stopped (signal)"
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)

    async def _unless_stopped(self, work: Awaitable[_T]) -> _T:
        """work's result, or _Stopped (work cancelled, so what it started is stopped)."""
        job = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({job, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not job.done():
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job
        if job.cancelled():
            raise _Stopped
        return job.result()

    async def run_vm(self, lab: nfs.LabGanesha, accel: Accel) -> str:
        """One qemu until it ends or is stopped: why it ended, or FALL_BACK."""
        if self.stop.is_set():
            raise _Stopped
        spec = _vm_spec(self.config, self.options, self.target, self.run_dir,
                        mac=self.outcome.mac, nfs_port=lab.port, accel=accel)  # fmt: skip
        spec.serial_log.unlink(missing_ok=True)
        self.watcher = Watcher()
        self.outcome.accel = accel
        self.started = time.monotonic()
        self.first_started = self.first_started or self.started
        tasks: list[asyncio.Task[None]] = []
        async with Background("qemu", qemu_argv(spec)) as vm:
            try:
                tasks.append(asyncio.create_task(self.tail_serial(spec.serial_log),
                                                 name="serial"))  # fmt: skip
                if self.options.console:
                    attach = bootvm_console.attach(spec.console_socket, self.stop)
                    tasks.append(asyncio.create_task(attach, name="console"))
                ended = await self.until_done(vm, accel)
                if ended != FALL_BACK:
                    await asyncio.sleep(0.3)  # the console's last lines
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        return ended

    def stall_bound(self, accel: Accel) -> float | None:
        """Seconds without a new milestone before the VM is given up."""
        if self.options.stall is None:
            return STALL_SECONDS[accel]
        return self.options.stall or None

    async def until_done(self, vm: Background, accel: Accel) -> str:  # noqa: PLR0911
        """Why this VM ended: a signal, its exit, the report, a failure, no progress, timeout."""
        if vm.task is None:
            return "the VM did not start"
        stall = self.stall_bound(accel)
        timeout = self.options.timeout
        while True:
            if self.stop.is_set():
                return "stopped (signal)"
            now = time.monotonic() - self.started
            verdict = progress_verdict(
                accel=accel,
                auto=self.options.accel == "auto",
                booted=self.watcher.booted or self.reported.is_set(),
                last_milestone_at=self.watcher.last_at(),
                now=now,
                stall_s=stall,
                exited=vm.exited,
            )
            if verdict == "fall-back":
                self.fell_back = f"the KVM guest stopped ({vm.outcome()})" if vm.exited else ""
                return FALL_BACK
            if vm.exited:
                return f"the VM stopped ({vm.outcome()})"
            if self.options.stop_after_report and self.reported.is_set():
                return "the agent reported"
            fatal = self.watcher.fatal()
            if fatal is not None and now - fatal.at >= FATAL_GRACE_SECONDS:
                return f"the guest failed: {fatal.text}"
            if verdict == "stalled":
                return (f"no progress: no new boot milestone within {stall:.0f} s under"
                        f" {accel.upper()} (last: {self.watcher.last()})")  # fmt: skip
            if timeout is not None and time.monotonic() - self.first_started >= timeout:
                return f"timeout after {timeout:.0f} s"
            await asyncio.sleep(0.25)

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
        topic = Topics(mqtt.topic_prefix).node_report(self.outcome.mac)
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


def serial_log_hint(outcome: BootOutcome) -> str:
    """Where the console log was kept."""
    return os.fspath(outcome.serial_log) if outcome.serial_log else "(no console output)"
