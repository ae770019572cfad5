"""Kernel NFS server exports (`/etc/exports.d/netroot.exports`) and the stable ids NFS needs."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pydantic import model_validator

from controller.config.models import CLIENTS_ALLOWED, Config, client_network_problem
from controller.core.errors import ConfigError
from controller.core.ids import valid_label, valid_version_id
from controller.core.model import Model
from controller.render.cmdline import GENERATED, PATH_ALLOWED, PATH_RE

FSID_LIMIT = 2**31 - 1  # fsid= is a 32-bit field; stay positive for every tool that prints it


class ExportSpec(Model):
    """One export: a label's link (kernel server), or one version's rootfs (Ganesha)."""

    label: str
    path: str
    rw: bool = False
    version: str | None = None

    @model_validator(mode="after")
    def _safe(self) -> ExportSpec:
        valid_label(self.label)
        if not PATH_RE.fullmatch(self.path):
            raise ValueError(f"invalid export path {self.path!r} (allowed: {PATH_ALLOWED})")
        if self.version is not None:
            valid_version_id(self.version)
        return self


def export_specs(
    config: Config, labels: Iterable[str], *, paths: Mapping[str, str] | None = None
) -> tuple[ExportSpec, ...]:
    """The exports of the labels that have an active version, in label order."""
    # Each label exports its link (Config.export_link) unless `paths` names
    # another directory: Ganesha needs the version's real rootfs (ganesha.py).
    # Two labels never share an export link: the config refuses it when loaded.
    specs: dict[str, ExportSpec] = {}
    for label in sorted(set(labels)):
        label_config = config.label(label)
        override = (paths or {}).get(label)
        path = override or str(config.export_link(label))
        if override:
            field = "state_dir"  # a version's rootfs lives in the store
        elif label_config.export_path:
            field = f"labels.{label}.export_path"
        else:
            field = "export_root"
        if not PATH_RE.fullmatch(path):
            problem = f"invalid export path {path!r}"
            raise ConfigError(config.source, field, problem, PATH_ALLOWED)
        specs[label] = ExportSpec(label=label, path=path, rw=label_config.rw)
    return tuple(specs.values())


def fsid_for(label: str) -> int:
    """The label's own fsid: a function of its name only, never 0 (0 is the NFSv4 root)."""
    return zlib.crc32(label.encode()) % FSID_LIMIT + 1


def assign_ids(
    labels: Iterable[str],
    first: Callable[[str], int],
    limit: int,
    *,
    order: Callable[[str], Any] | None = None,
) -> dict[str, int]:
    """Ids in 1..limit, each label's `first` choice unless an earlier label took it.

    Earlier means by name, or by `order` when given.
    """
    # The id must not change while a node holds file handles from it, so it
    # derives from the name alone; the rare clash moves the later name to the
    # next free id, which is just as stable while both labels exist.
    taken: dict[int, str] = {}
    ids: dict[str, int] = {}
    for label in sorted(set(labels), key=order):
        candidate = first(label)
        while candidate in taken:
            candidate = candidate % limit + 1
        taken[candidate] = label
        ids[label] = candidate
    return ids


def check_clients(clients: Sequence[str], source: str = "nfs") -> tuple[str, ...]:
    """The client networks, each a network or an explicit '*'; never an empty list."""
    # Both servers read an export without a client list as open to everyone.
    if not clients:
        raise ConfigError(source, "clients", "no client network configured", CLIENTS_ALLOWED)
    for net in clients:
        problem = client_network_problem(net)
        if problem is not None:
            raise ConfigError(
                source, "clients", f"invalid client network: {problem}", CLIENTS_ALLOWED
            )
    return tuple(clients)


def render_exports(specs: Iterable[ExportSpec], *, clients: Sequence[str], insecure: bool) -> str:
    """The exports file: one line per label, restricted to the client networks."""
    networks = check_clients(clients)
    specs = tuple(specs)
    fsids = assign_ids((spec.label for spec in specs), fsid_for, FSID_LIMIT)
    lines = [f"# {GENERATED}"]
    for spec in sorted(specs, key=lambda spec: spec.label):
        options = ["rw" if spec.rw else "ro", "no_root_squash", "no_subtree_check"]
        if insecure:
            options.append("insecure")  # only on request: it admits unprivileged client ports
        # An explicit fsid names the export, not the directory behind the link,
        # so nodes keep their file handles when activation swaps the link.
        options.append(f"fsid={fsids[spec.label]}")
        joined = ",".join(options)
        lines.append(" ".join([spec.path, *(f"{net}({joined})" for net in networks)]))
    return "\n".join(lines) + "\n"
