"""The original's nbd transport: a zstd squashfs of a version, served read-only by nbd-server.

The node's initramfs (dracut's nbd module, with nbd-client in the image)
attaches the export and mounts the squashfs; `rootovl` makes it writable in
RAM exactly as over NFS. The squashfs is built once per version, staged and
renamed into place, and kept under <state_dir>/cache/squashfs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from controller.config.models import Config
from controller.core import proc
from controller.core.errors import NetrootError, StoreError
from controller.render import BootTarget, boot_target, kernel_cmdline
from controller.render.cmdline import GENERATED, host_in_url
from controller.store import versions as store
from controller.store.layout import TMP_MARK, label_paths

NBD_PORT = 10809
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def export_name(label: str, version: str) -> str:
    """The nbd export of one version (no '/': dracut splits port/name at the first one)."""
    return f"{label}-{version}"


def squashfs_path(config: Config, label: str, version: str) -> Path:
    """Where the version's squashfs image is kept."""
    return config.state_dir / "cache" / "squashfs" / label / f"{version}.sqfs"


def mksquashfs_argv(rootfs: Path, output: Path, *, processors: int | None = None) -> list[str]:
    """A zstd squashfs of a tree, owners and xattrs kept, no progress bar."""
    argv = [
        "mksquashfs",
        os.fspath(rootfs),
        os.fspath(output),
        "-comp",
        "zstd",
        "-noappend",
        "-no-progress",
        "-xattrs",
    ]
    if processors is not None:
        argv += ["-processors", str(processors)]
    return argv


def make_squashfs(config: Config, label: str, version: str) -> Path:
    """The version's squashfs, built (staged, then renamed into place) if not there yet."""
    paths = label_paths(config, label)
    if version not in store.version_ids(paths):
        raise StoreError(f"{label}: no version {version!r}")
    output = squashfs_path(config, label, version)
    if output.is_file():
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    staged = output.with_name(f"{output.name}{TMP_MARK}{os.getpid()}")
    try:
        proc.run(mksquashfs_argv(paths.rootfs(version), staged))
        os.replace(staged, output)
    finally:
        staged.unlink(missing_ok=True)
    return output


def render_nbd_server(
    exports: Iterable[tuple[str, Path]], *, port: int = NBD_PORT, listen: str | None = None
) -> str:
    """An nbd-server config: every export read-only, listable."""
    lines = [f"# {GENERATED}", "[generic]", f"    port = {port}", "    allowlist = true"]
    if listen is not None:
        lines.append(f"    listenaddr = {listen}")
    for name, image in exports:
        if not _NAME_RE.fullmatch(name):
            raise NetrootError(f"invalid nbd export name {name!r}")
        lines += ["", f"[{name}]", f"    exportname = {os.fspath(image)}", "    readonly = true"]
    return "\n".join(lines) + "\n"


def nbd_server_argv(config_file: Path, pid_file: Path) -> list[str]:
    """nbd-server on its own config file: it daemonizes, its pid in pid_file.

    Not `-d`: without forking, nbd-server serves one client and exits.
    """
    return ["nbd-server", "-C", os.fspath(config_file), "-p", os.fspath(pid_file)]


def nbd_cmdline(target: BootTarget, *, server: str, port: int = NBD_PORT) -> str:
    """The NFS command line of the target with its root replaced by the version's nbd export."""
    if target.rw:
        raise NetrootError(f"{target.label}: a squashfs is read-only; rw labels need NFS")
    words = kernel_cmdline(target).split()
    name = export_name(target.label, target.version)
    # dracut: root=nbd:SERVER:PORT/NAME:FSTYPE:MOUNTOPTS
    words[0] = f"root=nbd:{host_in_url(server)}:{port}/{name}:squashfs:ro"
    return " ".join(words)


def render_label_server(config: Config, label: str) -> str:
    """`netroot render nbd LABEL`: the nbd-server config of the active version, and its cmdline."""
    paths = label_paths(config, label)
    version = store.active_version(paths)
    target = boot_target(config, label, version)
    image = squashfs_path(config, label, target.version)
    text = render_nbd_server([(export_name(label, target.version), image)])
    note = "" if image.is_file() else f"# {image} is built on first use (mksquashfs)\n"
    return text + note + f"# kernel command line:\n# {nbd_cmdline(target, server=config.server)}\n"
