"""NFS exports applied: the kernel server's exports file, NFS-Ganesha's config, and
the loopback Ganesha instances `netroot boot` runs. Re-applied on every
activation and gc (docs/design.md §7).

Kernel server: one export per label, its link, with a stable explicit fsid;
`exportfs -r` re-reads it. Ganesha: one export per version still in the store
(controller.render.ganesha explains why), then SIGHUP: a reload adds the new
version's export and drops pruned ones without touching the others, so a
node keeps the export it booted from.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, ValidationError

from controller.config.models import Config
from controller.core import proc
from controller.core.errors import StoreError
from controller.core.flock import file_lock
from controller.core.ids import is_store_version
from controller.core.log import get_logger
from controller.core.model import Model
from controller.render import ExportSpec, export_specs, render_exports, render_ganesha
from controller.render.ganesha import EXPORT_ID_LIMIT, export_key
from controller.store import fsops
from controller.store import versions as store
from controller.store.activation import Prepared, Step
from controller.store.layout import label_paths

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


def active_labels(config: Config, pending: Mapping[str, str] | None = None) -> list[str]:
    """Configured labels that have an active version (or are about to, per `pending`)."""
    return [
        name
        for name in sorted(config.labels)
        if (pending or {}).get(name) or store.active_version(label_paths(config, name))
    ]


def render_kernel_exports(config: Config, pending: Mapping[str, str] | None = None) -> str:
    """The kernel server's exports file for every label with an active version."""
    specs = export_specs(config, active_labels(config, pending))
    return render_exports(specs, clients=config.nfs.clients, insecure=config.nfs.insecure)


# --- Export_Ids ----------------------------------------------------------------------
#
# Ganesha refuses a reload that gives an existing Export_Id another Path and
# drops that export, so a version's id is assigned once, when it is first
# exported, and kept in a small registry beside the store: gc pruning another
# version, or a new one, never moves it. Ids are handed out in sequence and
# freed only when their version is gone, so one is reused only after the
# whole 16-bit range has gone round, long after Ganesha forgot the old export.


class ExportIds(Model):
    """The registry: `label/version` -> Export_Id, and where the next search starts."""

    next: int = 1
    ids: dict[str, int] = Field(default_factory=dict)


def export_ids_file(config: Config) -> Path:
    """Where the Export_Id registry lives."""
    return config.state_dir / "export-ids.json"


def _ids_lock(config: Config) -> contextlib.AbstractContextManager[None]:
    return file_lock(config.state_dir / "run" / "export-ids.lock")


def _read_ids(path: Path) -> ExportIds:
    try:
        return ExportIds.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return ExportIds()
    except ValidationError:
        raise StoreError(
            f"{path}: invalid Export_Id registry; restore it from a backup (deleting it"
            " renumbers every export, and running nodes lose theirs at the next reload)"
        ) from None


def _exists(config: Config, key: str) -> bool:
    label, _, version = key.partition("/")
    if not is_store_version(version):
        return False
    return label_paths(config, label).version(version).is_dir()


def allocate_ids(registry: ExportIds, keys: Iterable[str], alive: set[str]) -> ExportIds:
    """Keep every id of a key in `alive`; give new keys the next free ids. Pure."""
    ids = {k: i for k, i in registry.ids.items() if k in alive}
    taken = set(ids.values())
    cursor = registry.next
    for key in sorted(set(keys) - set(ids)):
        if len(taken) >= EXPORT_ID_LIMIT:
            raise StoreError(f"more than {EXPORT_ID_LIMIT} NFS exports: prune old versions")
        while cursor in taken:
            cursor = cursor % EXPORT_ID_LIMIT + 1
        ids[key] = cursor
        taken.add(cursor)
        cursor = cursor % EXPORT_ID_LIMIT + 1
    return ExportIds(next=cursor, ids=ids)


def export_ids(config: Config, specs: Iterable[ExportSpec]) -> dict[str, int]:
    """The Export_Id of each spec: its stored one, or a new one stored before it is used."""
    keys = [export_key(spec) for spec in specs]
    path = export_ids_file(config)
    with _ids_lock(config):
        registry = _read_ids(path)
        if all(key in registry.ids for key in keys):
            return {key: registry.ids[key] for key in keys}
        alive = {key for key in registry.ids if _exists(config, key)} | set(keys)
        updated = allocate_ids(registry, keys, alive)
        fsops.write_atomic(path, updated.model_dump_json(indent=1).encode(), 0o600)
    return {key: updated.ids[key] for key in keys}


def render_system_ganesha(config: Config, labels: Iterable[str] | None = None) -> str:
    """The boot server's ganesha.nfsd config: every version of every label (or of `labels`)."""
    chosen = sorted(config.labels) if labels is None else labels
    specs = version_exports(config, chosen)
    return render_ganesha(
        specs,
        clients=config.nfs.clients,
        insecure=config.nfs.insecure,
        bind_addr=SYSTEM_BIND,
        port=config.nfs.port,
        recovery_root=SYSTEM_RECOVERY,
        ids=export_ids(config, specs),
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
    specs = version_exports(config, lab.labels)
    return render_ganesha(
        specs,
        clients=lab.clients,
        insecure=lab.insecure,
        bind_addr=lab.bind_addr,
        port=lab.port,
        recovery_root=os.fspath(lab.recovery_root),
        ids=export_ids(config, specs),
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


def _apply_lock(config: Config) -> contextlib.AbstractContextManager[None]:
    # Two activations of different labels both rewrite these files: one at a
    # time, so the last write is never computed from an older store.
    return file_lock(config.state_dir / "run" / "nfs.lock", mode=0o644)


def _stage_if_changed(prepared: Prepared, path: Path, text: str) -> bool:
    tmp = fsops.stage_file_if_changed(path, text.encode())
    if tmp is not None:
        prepared.exports.append(Step(tmp, path))
    return tmp is not None


def _reload_ganesha(pid_file: Path, config_file: Path, done: Applied) -> None:
    pid = read_pid(pid_file)
    if pid is not None and reload_ganesha(pid):
        done.reloaded.append(f"ganesha.nfsd pid {pid}")
    else:
        done.notes.append(
            f"ganesha.nfsd is not running (no live pid in {pid_file}); start it with"
            f" -f {config_file}"
        )


def _stage_system(
    config: Config, prepared: Prepared, done: Applied, pending: Mapping[str, str]
) -> None:
    """The configured server (nfs.manage): its file staged, its reload queued."""
    nfs = config.nfs
    if nfs.server == "kernel":
        _stage_if_changed(prepared, nfs.exports_file, render_kernel_exports(config, pending))
        done.written.append(str(nfs.exports_file))

        def exportfs() -> None:
            proc.run(exportfs_argv())
            done.reloaded.append("exportfs -r")

        prepared.reload.append(exportfs)
        return
    if _stage_if_changed(prepared, nfs.ganesha_config, render_system_ganesha(config)):
        done.written.append(str(nfs.ganesha_config))
    prepared.reload.append(lambda: _reload_ganesha(nfs.ganesha_pidfile, nfs.ganesha_config, done))


def _stage_labs(config: Config, prepared: Prepared, done: Applied) -> None:
    """Every running `netroot boot` instance: new versions added, pruned ones dropped."""
    for _record, lab in lab_instances(config):
        if _stage_if_changed(prepared, lab.config_file, render_lab(config, lab)):
            done.written.append(str(lab.config_file))

            def reload(lab: LabGanesha = lab) -> None:
                if reload_ganesha(lab.pid, lab.config_file):
                    done.reloaded.append(f"lab ganesha.nfsd pid {lab.pid} port {lab.port}")

            prepared.reload.append(reload)


def prepare(
    config: Config, prepared: Prepared, pending: Mapping[str, str] | None = None
) -> Applied:
    """Stage every export file netroot manages into prepared, as if `pending` were active.

    The apply lock is held (in prepared) until it is published or discarded.
    The returned Applied fills in as prepared publishes.
    """
    done = Applied()
    prepared.held.enter_context(_apply_lock(config))
    if config.nfs.manage:
        _stage_system(config, prepared, done, pending or {})
    _stage_labs(config, prepared, done)

    def report() -> None:
        if done.written or done.reloaded:
            log.info("nfs applied", written=done.written, reloaded=done.reloaded)

    prepared.reload.append(report)
    return done


def apply_labs(config: Config, done: Applied) -> None:
    """Every running `netroot boot` instance brought up to date now."""
    prepared = Prepared()
    try:
        prepared.held.enter_context(_apply_lock(config))
        _stage_labs(config, prepared, done)
    except BaseException:
        prepared.discard()
        raise
    prepared.publish()


def apply(config: Config) -> Applied:
    """Re-apply every export netroot manages (after an activation or a gc)."""
    prepared = Prepared()
    try:
        done = prepare(config, prepared)
    except BaseException:
        prepared.discard()
        raise
    prepared.publish()
    return done
