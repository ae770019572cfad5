"""`--accel auto` for `netroot boot`: KVM only once a KVM guest was seen running on this host.

The probe boots a real kernel under KVM and waits a few seconds for its
console; the answer holds until the host reboots (keyed by its boot id) and
is kept in a small file in the state directory, so it is measured and
printed once. The decision itself is qemu.decide_accel; the fall-back of a
KVM guest that shows no milestone is milestones.progress_verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from controller.config.models import Config
from controller.core import proc
from controller.core.errors import ProcessError
from controller.core.log import get_logger
from controller.store import fsops
from controller.vm.qemu import Accel, AccelRequest, KvmProbe, decide_accel, kvm_probe_argv
from controller.vm.qemu import probe_saw_guest as saw_guest

log = get_logger("bootvm")

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
KVM_DEVICE = Path("/dev/kvm")
HOST_KERNELS = Path("/boot")
PROBE_SECONDS = 10.0  # a KVM guest prints its first line within a second; qemu may start slowly

Say = Callable[[str], None]


def cache_file(config: Config) -> Path:
    """Where the probe's answer is kept."""
    return config.state_dir / "cache" / "kvm-probe.json"


def host_boot_id() -> str:
    """This host boot's id (a fresh one after every reboot)."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return "unknown"


def read_cached(path: Path, boot_id: str) -> KvmProbe | None:
    """The kept answer, if it was measured during this host boot."""
    try:
        probe = KvmProbe.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None
    return probe if probe.boot_id == boot_id else None


def write_cached(path: Path, probe: KvmProbe) -> None:
    """Keep an answer (best effort: without it the next boot probes again)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fsops.write_atomic(path, probe.model_dump_json().encode(), durable=False)
    except OSError as exc:
        log.warning("could not keep the KVM probe result", path=str(path), error=str(exc))


def probe_kernel(version_kernel: Path) -> Path | None:
    """A kernel to probe with: the host's newest (surely bootable), else the version's own."""
    with contextlib.suppress(OSError):
        host = sorted(HOST_KERNELS.glob("vmlinuz-*"), key=lambda p: p.stat().st_mtime)
        readable = [p for p in host if os.access(p, os.R_OK)]
        if readable:
            return readable[-1]
    return version_kernel if version_kernel.is_file() else None


async def probe_kvm(
    kernel: Path, work_dir: Path, boot_id: str, *, within_s: float = PROBE_SECONDS
) -> KvmProbe:
    """Boot kernel under KVM; it runs if its console shows the kernel within within_s."""
    serial_log = work_dir / "kvm-probe.serial.log"
    serial_log.unlink(missing_ok=True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.create_task(proc.arun(kvm_probe_argv(kernel, serial_log), check=False))
    try:
        while True:
            with contextlib.suppress(OSError):
                if saw_guest(serial_log.read_text(errors="replace")):
                    took = loop.time() - started
                    detail = f"a KVM guest printed its kernel banner in {took:.1f} s"
                    return KvmProbe(boot_id=boot_id, runs=True, detail=detail,
                                    kernel=os.fspath(kernel))  # fmt: skip
            if task.done():
                detail = f"the KVM guest did not run ({_exit_detail(task)})"
                break
            if loop.time() - started > within_s:
                detail = f"a KVM guest printed nothing within {within_s:.0f} s"
                break
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ProcessError):
            await task
        serial_log.unlink(missing_ok=True)
    return KvmProbe(boot_id=boot_id, runs=False, detail=detail, kernel=os.fspath(kernel))


def _exit_detail(task: asyncio.Task[proc.Completed]) -> str:
    exc = task.exception()
    if exc is not None:
        return str(exc)
    done = task.result()
    last = proc.tail(done.stderr or done.stdout, 1)
    return f"qemu exited with status {done.returncode}: {last}".rstrip(": ")


async def choose_accel(
    config: Config, requested: AccelRequest, version_kernel: Path, work_dir: Path, say: Say
) -> Accel:
    """The accelerator for a VM: as asked, or (auto) KVM only if a KVM guest runs here."""
    if requested != "auto":
        return requested
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return "tcg"  # nothing to probe, nothing to say: the usual case
    boot_id = host_boot_id()
    path = cache_file(config)
    probe = read_cached(path, boot_id)
    if probe is None:
        kernel = probe_kernel(version_kernel)
        if kernel is None:
            return "tcg"
        started = time.monotonic()
        probe = await probe_kvm(kernel, work_dir, boot_id)
        write_cached(path, probe)
        accel = decide_accel(requested, probe)
        say(f"KVM probe ({time.monotonic() - started:.1f} s): {probe.detail}; using"
            f" {accel.upper()} (kept for this host boot in {path})")  # fmt: skip
    return decide_accel(requested, probe)


def remember_kvm_hangs(config: Config, detail: str) -> None:
    """A KVM guest chosen by auto hung after all: the next boots go straight to TCG."""
    probe = KvmProbe(boot_id=host_boot_id(), runs=False, detail=detail)
    write_cached(cache_file(config), probe)
