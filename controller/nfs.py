"""NFS exports applied: the kernel server's exports file, NFS-Ganesha's config, and
the loopback Ganesha instances `netroot boot` runs. Re-applied on every
activation and gc (DESIGN.md section 5).

Kernel server: one export per label, its link, with a stable explicit fsid;
`exportfs -r` re-reads it. Ganesha: one export per version still in the store
(controller.render.ganesha explains why), then SIGHUP: a reload adds the new
version's export and drops pruned ones without touching the others, so a
node keeps the export it booted from.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from controller import fsops, proc, store
from controller.config import Config, Model
from controller.layout import label_paths
from controller.log import get_logger
from controller.render import ExportSpec, export_specs, render_exports, render_ganesha

log = get_logger("nfs")

GANESHA_BIN = "ganesha.nfsd"
# Every export carries its own client list; the listening socket needs none.
SYSTEM_BIND = "0.0.0.0"  # noqa: S104
SYSTEM_RECOVERY = "/var/lib/nfs/ganesha"


def exportfs_argv() -> list[str]:
    """Make the kernel server re-read /etc/exports and /etc/exports.d."""
    return ["exportfs", "-r"]


def ganesha_argv(config_file: Path, log_file: Path, pid_file: Path) -> list[str]:
    """ganesha.nfsd in the foreground (the caller supervises it)."""
    return [
        GANESHA_BIN,
        "-F",
        "-f",
        os.fspath(config_file),
        "-L",
        os.fspath(log_file),
        "-p",
        os.fspath(pid_file),
        "-N",
        "NIV_EVENT",
    ]


def version_exports(config: Config, labels: Iterable[str]) -> list[ExportSpec]:
    """One export per version of the labels still in the store, at its real rootfs."""
    specs = []
    for label in sorted(set(labels)):
        paths = label_paths(config, label)
        rw = config.label(label).rw
        for version in store.version_ids(paths):
            rootfs = paths.rootfs(version)
            if rootfs.is_dir():
                # Ganesha refuses a Path with a symlink in it (ELOOP).
                real = os.path.realpath(rootfs)
                specs.append(ExportSpec(label=label, path=real, rw=rw, version=version))
    return specs


def active_labels(config: Config) -> list[str]:
    """Configured labels that have an active version."""
    return [
        name for name in sorted(config.labels) if store.active_version(label_paths(config, name))
    ]


def render_kernel_exports(config: Config) -> str:
    """The kernel server's exports file for every label with an active version."""
    specs = export_specs(config, active_labels(config))
    return render_exports(specs, clients=config.nfs.clients, insecure=config.nfs.insecure)


def render_system_ganesha(config: Config, labels: Iterable[str] | None = None) -> str:
    """The boot server's ganesha.nfsd config: every version of every label (or of `labels`)."""
    chosen = sorted(config.labels) if labels is None else labels
    return render_ganesha(
        version_exports(config, chosen),
        clients=config.nfs.clients,
        insecure=config.nfs.insecure,
        bind_addr=SYSTEM_BIND,
        port=config.nfs.port,
        recovery_root=SYSTEM_RECOVERY,
    )


# --- Ganesha processes ---------------------------------------------------------------


def _process_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_ganesha(pid: int, config_file: Path | None = None) -> bool:
    """True if pid is a ganesha.nfsd (reading config_file, when given): safe to signal."""
    argv = _process_cmdline(pid)
    if not argv or Path(argv[0]).name != GANESHA_BIN:
        return False
    return config_file is None or os.fspath(config_file) in argv


def reload_ganesha(pid: int, config_file: Path | None = None) -> bool:
    """SIGHUP a running ganesha.nfsd: it re-reads its exports. False if it is not running."""
    if not is_ganesha(pid, config_file):
        return False
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return False
    return True


def read_pid(pid_file: Path) -> int | None:
    """The pid in a pid file, or None."""
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# --- instances run by `netroot boot` -----------------------------------------------------


class LabGanesha(Model):
    """A loopback ganesha.nfsd started by `netroot boot`, registered so activation reloads it."""

    pid: int
    config_file: Path
    port: int
    labels: tuple[str, ...]
    recovery_root: Path
    clients: tuple[str, ...] = ("127.0.0.1/32",)
    insecure: bool = True  # guest traffic arrives through a forwarder on an unprivileged port
    bind_addr: str = "127.0.0.1"


def lab_dir(config: Config) -> Path:
    """Where running lab instances are registered."""
    return config.state_dir / "run" / "ganesha"


def render_lab(config: Config, lab: LabGanesha) -> str:
    """A lab instance's config: every version of its labels, loopback clients only."""
    return render_ganesha(
        version_exports(config, lab.labels),
        clients=lab.clients,
        insecure=lab.insecure,
        bind_addr=lab.bind_addr,
        port=lab.port,
        recovery_root=os.fspath(lab.recovery_root),
    )


def register_lab(config: Config, name: str, lab: LabGanesha) -> Path:
    """Record a running instance; returns the record's path."""
    record = lab_dir(config) / f"{name}.json"
    fsops.write_atomic(record, lab.model_dump_json().encode(), durable=False)
    return record


def lab_instances(config: Config) -> list[tuple[Path, LabGanesha]]:
    """Registered instances still running; records of dead ones are removed."""
    found = []
    directory = lab_dir(config)
    if not directory.is_dir():
        return []
    for record in sorted(directory.glob("*.json")):
        try:
            lab = LabGanesha.model_validate_json(record.read_bytes())
        except (OSError, ValidationError):
            record.unlink(missing_ok=True)
            continue
        if is_ganesha(lab.pid, lab.config_file):
            found.append((record, lab))
        else:
            record.unlink(missing_ok=True)
    return found


# --- apply ---------------------------------------------------------------------------


@dataclass
class Applied:
    """What apply changed: files written, servers reloaded, and notes for the user."""

    written: list[str] = field(default_factory=list)
    reloaded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _apply_lock(config: Config) -> Iterator[None]:
    # Two activations of different labels both rewrite these files: one at a
    # time, so the last write is never computed from an older store.
    lock = config.state_dir / "run" / "nfs.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_if_changed(path: Path, text: str) -> bool:
    data = text.encode()
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    fsops.write_atomic(path, data)
    return True


def apply_system(config: Config, done: Applied) -> None:
    """The configured server (nfs.manage): write its file and make it re-read it."""
    nfs = config.nfs
    if nfs.server == "kernel":
        _write_if_changed(nfs.exports_file, render_kernel_exports(config))
        done.written.append(str(nfs.exports_file))
        proc.run(exportfs_argv())
        done.reloaded.append("exportfs -r")
        return
    if _write_if_changed(nfs.ganesha_config, render_system_ganesha(config)):
        done.written.append(str(nfs.ganesha_config))
    pid = read_pid(nfs.ganesha_pidfile)
    if pid is not None and reload_ganesha(pid):
        done.reloaded.append(f"ganesha.nfsd pid {pid}")
    else:
        done.notes.append(
            f"ganesha.nfsd is not running (no live pid in {nfs.ganesha_pidfile}); start it with"
            f" -f {nfs.ganesha_config}"
        )


def apply_labs(config: Config, done: Applied) -> None:
    """Every running `netroot boot` instance: new versions added, pruned ones dropped."""
    for _record, lab in lab_instances(config):
        if _write_if_changed(lab.config_file, render_lab(config, lab)):
            done.written.append(str(lab.config_file))
            if reload_ganesha(lab.pid, lab.config_file):
                done.reloaded.append(f"lab ganesha.nfsd pid {lab.pid} port {lab.port}")


def apply(config: Config) -> Applied:
    """Re-apply every export netroot manages (after an activation or a gc)."""
    done = Applied()
    with _apply_lock(config):
        if config.nfs.manage:
            apply_system(config, done)
        apply_labs(config, done)
    if done.written or done.reloaded:
        log.info("nfs applied", written=done.written, reloaded=done.reloaded)
    return done
