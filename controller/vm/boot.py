"""`netroot boot`: PXE-boot a label's active version in qemu, as the original's startnfs.

NFS-Ganesha serves every version of the label on a free loopback port; qemu
boots over user-mode networking with `restrict=on`, its built-in TFTP
serving a private TFTP root rendered for the guest's view of the world (NFS
and MQTT at GUEST_SERVER, forwarded to loopback). Milestones are reported
as the serial console shows them, the agent's report as the broker
receives it. A VM that shows no new milestone for a while (vm.milestones
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
from controller.events.node_messages import NodeMessageError, NodeReport, parse_node_message
from controller.events.topics import Topics
from controller.render import BootTarget
from controller.render.cmdline import INITRD_NAME, KERNEL_NAME
from controller.serve import nfs, tftp
from controller.serve.httpboot import BootHttpServer, Served
from controller.store import versions as store
from controller.store.canary import read_pins
from controller.store.layout import label_paths
from controller.vm import console
from controller.vm.accel import choose_accel, remember_kvm_hangs
from controller.vm.guest import BootOptions, prepare_tftp, random_mac, vm_spec, vm_target
from controller.vm.milestones import (
    KVM_FIRST_MILESTONE_SECONDS,
    STALL_SECONDS,
    Hit,
    Watcher,
    console_tail,
    progress_verdict,
)
from controller.vm.qemu import (
    OVMF_CODE,
    Accel,
    mosquitto_sub_argv,
    qemu_argv,
)
from controller.vm.servers import Background, lab_ganesha, new_run_dir, remove_run_dir

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, kill, a closed terminal
FATAL_GRACE_SECONDS = 2.0  # after a fatal console line: the lines that explain it
TAIL_LINES = 20
_T = TypeVar("_T")


@dataclass
class BootOutcome:
    """How the boot went."""

    label: str
    version: str
    mac: str
    hits: list[Hit] = field(default_factory=list)
    report: NodeReport | None = None
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


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the tasks and wait until each has ended."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


class _Stopped(Exception):
    """A stop signal arrived before the VM ran."""


FALL_BACK: Final = "fall back to TCG"
MENU_POLL_S: Final = 1.0  # how often the private menus are compared with the store


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
    tftp.check_boot_files(paths, version)
    if options.uefi and not OVMF_CODE.is_file():
        raise NetrootError(f"UEFI boot needs {OVMF_CODE} (Debian package ovmf)")
    target = vm_target(config, options.label, version, options.ssh_key, http=options.over_http)
    outcome = BootOutcome(options.label, version, options.mac or random_mac())
    run_dir = new_run_dir(config, options.label)
    session = _Session(config, options, target, run_dir, outcome, emit, say)
    loop = asyncio.get_running_loop()
    # Installed for the whole run, wrap-up included: a stop signal that comes while the
    # VM is already being put away (--stop-after-report) must not cut the wrap-up short.
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, session.stop.set)  # signals only set an event
    try:
        if not options.direct:
            session.render_menus()
        await session.supervise()
    finally:
        text = proc.file_tail(run_dir / "serial.log", 10 * TAIL_LINES)
        outcome.console_tail = console_tail(text, TAIL_LINES)
        outcome.serial_log = _keep_log(config, run_dir)
        remove_run_dir(run_dir)
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
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
    http_port: int | None = None  # the boot file server's loopback port (HTTP boot)

    def served(self, event: Served) -> None:
        """Boot file milestones as the server sees them (iPXE prints to the screen only)."""
        if event.phase == "start" and event.name == KERNEL_NAME:
            name, text = "pxe", "iPXE is loading the kernel over HTTP"
        elif event.phase == "done" and event.name == INITRD_NAME:
            name, text = "boot-files", "kernel and initrd loaded over HTTP"
        else:
            return
        hit = self.watcher.mark(name, text, time.monotonic() - self.started)
        if hit is not None:
            self.record(hit)

    def record(self, hit: Hit) -> None:
        """Keep and show a milestone."""
        self.outcome.hits.append(hit)
        self.emit(hit)

    async def supervise(self) -> None:
        """Accelerator, Ganesha, then qemu and the watchers, until the first reason to stop."""
        tasks: list[asyncio.Task[None]] = []
        try:
            paths = label_paths(self.config, self.options.label)
            kernel = paths.boot(self.target.version) / KERNEL_NAME
            accel = await self._unless_stopped(choose_accel(
                self.config, self.options.accel, kernel, self.run_dir, self.say))  # fmt: skip
            async with contextlib.AsyncExitStack() as stack:
                lab = await self._unless_stopped(stack.enter_async_context(
                    lab_ganesha(self.config, self.options.label, self.run_dir)))  # fmt: skip
                if self.options.over_http:
                    http = BootHttpServer(self.config, "127.0.0.1", 0, self.served)
                    self.http_port = (await stack.enter_async_context(http)).port
                if self.config.mqtt.enabled:
                    tasks.append(asyncio.create_task(self.watch_reports(), name="mqtt"))
                if not self.options.direct:
                    tasks.append(asyncio.create_task(self.follow_menus(), name="menus"))
                ended = await self.run_vm(lab, accel)
                if ended == FALL_BACK:
                    why = self.fell_back or (f"the KVM guest showed no boot milestone within"
                                             f" {KVM_FIRST_MILESTONE_SECONDS:.0f} s")  # fmt: skip
                    self.say(f"{why}: stopped it, booting again under TCG")
                    remember_kvm_hangs(self.config, why)
                    ended = await self.run_vm(lab, "tcg")
                self.outcome.ended = ended
        except _Stopped:
            self.outcome.ended = "stopped (signal)"
        finally:
            await _cancel_all(tasks)

    def menu_key(self) -> tuple[str | None, str | None]:
        """What the guest's next PXE boot should get: the active version, its canary pin."""
        paths = label_paths(self.config, self.options.label)
        pinned = read_pins(paths)
        mine = pinned is not None and self.outcome.mac in pinned.macs
        return store.active_version(paths), pinned.version if pinned and mine else None

    def render_menus(self) -> tuple[str | None, str | None]:
        """The private TFTP root as the real one serves this MAC; returns what it rendered."""
        key = active, pinned = self.menu_key()
        options, label = self.options, self.options.label
        if active is not None and active != self.target.version:
            self.target = vm_target(self.config, label, active, options.ssh_key,
                                    http=options.over_http)  # fmt: skip
        pins = {}
        if pinned is not None:
            pins[self.outcome.mac] = vm_target(self.config, label, pinned, options.ssh_key,
                                               http=options.over_http)  # fmt: skip
        prepare_tftp(self.config, self.target, self.run_dir / "tftp", uefi=options.uefi, pins=pins)
        return key

    async def follow_menus(self) -> None:
        """A reboot of the guest (the agent's `reboot`) boots what the real menus name now:
        a new active version, or a canary rollout's pin of this MAC."""
        seen = self.menu_key()
        while True:
            await asyncio.sleep(MENU_POLL_S)
            try:
                if await asyncio.to_thread(self.menu_key) != seen:
                    seen = await asyncio.to_thread(self.render_menus)
                    self.say(f"menus rendered again: active {seen[0]}, pinned {seen[1] or '-'}")
            except (NetrootError, OSError) as exc:
                self.say(f"menus not rendered again: {exc}")

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
        spec = vm_spec(self.config, self.options, self.target, self.run_dir,
                        mac=self.outcome.mac, nfs_port=lab.port, accel=accel,
                        http_port=self.http_port)  # fmt: skip
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
                    attach = console.attach(spec.console_socket, self.stop)
                    tasks.append(asyncio.create_task(attach, name="console"))
                ended = await self.until_done(vm, accel)
                if ended != FALL_BACK:
                    await asyncio.sleep(0.3)  # the console's last lines
            finally:
                await _cancel_all(tasks)
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
            report = parse_node_message(
                topic, payload.encode(), prefix=self.config.mqtt.topic_prefix
            )
        except NodeMessageError:
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
