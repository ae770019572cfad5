"""NFS-Ganesha configuration: NFSv4 over TCP only, one EXPORT block per version.

Two facts about Ganesha 4.3's VFS FSAL shape what callers pass in (checked on
this machine): an export Path that is a symlink fails with ELOOP, so each
spec's path must be a version's real rootfs directory, not the export link;
and a reload (SIGHUP) that changes the Path of an existing Export_Id is
refused and drops that export. So every version still in the store is its
own export, `/<label>/<version>`, whose Export_Id and Path never change: a
reload only adds the new version's export and drops pruned ones (checked
too), and a node keeps the export of the version it booted for as long as
that version exists. The kernel command line pins the version; the boot
menu, replaced atomically at activation, is the switch point.
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Iterable, Mapping, Sequence

from controller.core.errors import ConfigError
from controller.render.cmdline import GENERATED, PATH_ALLOWED, PATH_RE
from controller.render.exports import ExportSpec, assign_ids, check_clients

EXPORT_ID_LIMIT = 65535  # Export_Id is 16 bits; 0 is Ganesha's own pseudo-root export


def export_id_for(label: str) -> int:
    """The label's own Export_Id: a function of its name only, in 1..65535."""
    return zlib.crc32(label.encode()) % EXPORT_ID_LIMIT + 1


def export_ids(labels: Iterable[str]) -> dict[str, int]:
    """Export_Id per label; a clash moves the later name (in sort order) to the next free id."""
    return assign_ids(labels, export_id_for, EXPORT_ID_LIMIT)


def export_key(spec: ExportSpec) -> str:
    """What an Export_Id derives from: `label`, or `label/version` for a version's export."""
    return spec.label if spec.version is None else f"{spec.label}/{spec.version}"


def _older_first(key: str) -> tuple[str, str]:
    # Version ids start with their build time: on a (rare) hash clash the
    # newer version moves, so an export a node may be using keeps its id.
    return (key.partition("/")[2], key)


def spec_export_ids(specs: Iterable[ExportSpec]) -> dict[str, int]:
    """Export_Id per export_key; a clash moves the newer version to the next free id."""
    return assign_ids(
        (export_key(spec) for spec in specs), export_id_for, EXPORT_ID_LIMIT, order=_older_first
    )


def pseudo_path(label: str, version: str | None = None) -> str:
    """Where an export appears in Ganesha's NFSv4 namespace (the path in `root=nfs4:`)."""
    return f"/{label}" if version is None else f"/{label}/{version}"


def _export_block(spec: ExportSpec, export_id: int, clients: str, insecure: bool) -> list[str]:
    access = "RW" if spec.rw else "RO"
    return [
        "EXPORT {",
        f"    Export_Id = {export_id};",
        f"    Path = {spec.path};",
        f"    Pseudo = {pseudo_path(spec.label, spec.version)};",
        "    Protocols = 4;",
        "    Transports = TCP;",
        # Nobody gets in by default; the CLIENT block grants the networks.
        "    Access_Type = None;",
        "    Squash = No_Root_Squash;",
        "    SecType = sys;",
        # Ganesha caches a name's file handle and attributes for 60 s by default;
        # a live edit replaces files by rename, and the old inode lives on in
        # older versions, so the node would read the old file after its
        # remount. 0: every lookup and open asks the filesystem (a stat).
        "    Attr_Expiration_Time = 0;",
        # Ganesha's spelling of the kernel server's `insecure`.
        f"    PrivilegedPort = {'false' if insecure else 'true'};",
        "    FSAL { Name = VFS; }",
        "    CLIENT {",
        f"        Clients = {clients};",
        f"        Access_Type = {access};",
        # Without it the block inherits NFSv3 as well and Ganesha warns at start.
        "        Protocols = 4;",
        "        Squash = No_Root_Squash;",
        "    }",
        "}",
    ]


def render_ganesha(
    specs: Iterable[ExportSpec],
    *,
    clients: Sequence[str],
    insecure: bool,
    bind_addr: str,
    port: int,
    recovery_root: str,
    ids: Mapping[str, int] | None = None,
) -> str:
    """The whole ganesha.nfsd config: core parameters, NFSv4 options and every export.

    ids (by export_key) are the ones stored with the versions (controller.serve.nfs);
    without them ids derive from the names, for a one-off config.
    """
    networks = ", ".join(check_clients(clients))
    try:
        ipaddress.ip_address(bind_addr)
    except ValueError:
        raise ConfigError(
            "ganesha", "Bind_addr", f"invalid address {bind_addr!r}", "an IPv4 or IPv6 address"
        ) from None
    if not 1 <= port <= 65535:
        raise ConfigError("ganesha", "NFS_Port", f"invalid port {port!r}", "1-65535")
    if not PATH_RE.fullmatch(recovery_root):
        raise ConfigError(
            "ganesha", "RecoveryRoot", f"invalid path {recovery_root!r}", PATH_ALLOWED
        )
    specs = sorted(specs, key=export_key)
    keys = [export_key(spec) for spec in specs]
    if len(set(keys)) != len(keys):
        raise ConfigError("ganesha", "EXPORT", "an export is given twice", "one per version")
    if ids is None:
        ids = spec_export_ids(specs)
    missing = [key for key in keys if key not in ids]
    if missing or len({ids[key] for key in keys}) != len(keys):
        raise ConfigError("ganesha", "Export_Id", "missing or repeated", "one id per export")
    lines = [
        f"# {GENERATED}",
        "NFS_CORE_PARAM {",
        f"    Bind_addr = {bind_addr};",
        f"    NFS_Port = {port};",
        # NFSv4 alone needs neither rpcbind, NLM nor RQUOTA.
        "    Protocols = 4;",
        "    Enable_NLM = false;",
        "    Enable_RQUOTA = false;",
        "    Enable_UDP = false;",
        "}",
        "",
        "NFSV4 {",
        # Read-only roots hold no client state worth a grace period at restart.
        "    Graceless = true;",
        # Numeric owners: names would map to nobody without an idmapd domain.
        "    Only_Numeric_Owners = true;",
        "    RecoveryBackend = fs;",
        f"    RecoveryRoot = {recovery_root};",
        "}",
    ]
    for spec in specs:
        lines.append("")
        lines += _export_block(spec, ids[export_key(spec)], networks, insecure)
    lines += ["", "LOG { Default_Log_Level = EVENT; }"]
    return "\n".join(lines) + "\n"
