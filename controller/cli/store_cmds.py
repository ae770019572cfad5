"""activate, rollback, versions, gc, recover, verify."""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic.dataclasses import dataclass

from controller.build import secretscan
from controller.cli.options import OPTIONS, Common, Handler, add_command, load
from controller.cli.output import emit_json, human_size, table
from controller.config.models import Config
from controller.core.errors import StoreError
from controller.core.ids import check_label
from controller.daemon.announce import STAMP_FORMAT, Announcer
from controller.daemon.db import NodeGuard, db_path
from controller.events.wire import ActivationReason
from controller.serve import bootfiles
from controller.store import activation, gc, treeindex
from controller.store import versions as store
from controller.store.layout import LabelPaths, label_paths
from controller.store.locking import label_lock
from controller.store.manifest import Manifest
from controller.store.recovery import Recovered, known_labels, recover_label


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class LabelOptions(Common):
    """rollback, versions: a label alone."""

    label: str


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class ActivateOptions(Common):
    """netroot activate."""

    label: str
    version: str | None
    reason: Literal["auto", "cli"]


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class GcOptions(Common):
    """netroot gc."""

    label: str
    dry_run: bool


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class RecoverOptions(Common):
    """netroot recover."""

    label: str | None


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class VerifyOptions(Common):
    """netroot verify."""

    label: str
    version: str | None
    deep: bool
    secrets: bool


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the store commands."""
    p = add_command(
        sub,
        common,
        "activate",
        Handler(ActivateOptions, cmd_activate),
        help="make a version the one new boots get (default: newest)",
    )
    p.add_argument("label")
    p.add_argument("version", nargs="?")
    # The daemon's own activation of its build says so in image.activated.
    p.add_argument("--reason", choices=["auto", "cli"], default="cli", help=argparse.SUPPRESS)

    p = add_command(
        sub,
        common,
        "rollback",
        Handler(LabelOptions, cmd_rollback),
        help="return to the previously active version",
    )
    p.add_argument("label")

    p = add_command(
        sub,
        common,
        "versions",
        Handler(LabelOptions, cmd_versions),
        help="list versions, the active one marked",
    )
    p.add_argument("label")

    p = add_command(
        sub,
        common,
        "gc",
        Handler(GcOptions, cmd_gc),
        help="prune old versions (keep_versions, in-use guard)",
    )
    p.add_argument("label")
    p.add_argument("--dry-run", action="store_true", help="show what would be pruned")

    p = add_command(
        sub,
        common,
        "recover",
        Handler(RecoverOptions, cmd_recover),
        help="sweep crash leftovers and re-point links to the active versions",
    )
    p.add_argument("label", nargs="?", help="default: every label")

    p = add_command(
        sub,
        common,
        "verify",
        Handler(VerifyOptions, cmd_verify),
        help="check a version against its manifest",
    )
    p.add_argument("label")
    p.add_argument("version", nargs="?", help="default: the active version")
    p.add_argument("--deep", action="store_true", help="hash every file of the tree")
    p.add_argument(
        "--secrets",
        action="store_true",
        help="also list private keys, password hashes and other secret-looking files",
    )


def label_of(config: Config, label: str) -> LabelPaths:
    """The store paths of a configured label (a one-line error names a bad or unknown one)."""
    check_label(label)
    config.label(label)
    return label_paths(config, label)


def waiting(label: str) -> None:
    """Said while another build or activation of the label holds its lock."""
    print(f"netroot: waiting for another build or activation of {label}...", file=sys.stderr)


def _summary(m: Manifest) -> dict[str, Any]:
    return m.model_dump(mode="json")


def _print_activation(opts: Common, done: activation.Activation) -> None:
    if opts.json:
        emit_json(
            {
                "label": done.label,
                "version": done.version,
                "previous": done.previous,
                "action": done.action,
            }
        )
    else:
        verb = "rolled back" if done.action == "rollback" else "activated"
        print(f"{verb} {done.label} to {done.version} (was {done.previous or 'none'})")


def cmd_activate(opts: ActivateOptions) -> int:
    """Activate a version."""
    config = load(opts)
    paths = label_of(config, opts.label)
    reason: ActivationReason = opts.reason
    with Announcer(config) as announce, label_lock(paths, on_wait=lambda: waiting(opts.label)):
        recover_label(config, opts.label, bootfiles.renderer(config))
        before = announce.history_length(paths)
        done = activation.activate(paths, opts.version, bootfiles.renderer(config))
        announce.activation(paths, before, reason)
    _print_activation(opts, done)
    return 0


def cmd_rollback(opts: LabelOptions) -> int:
    """Activate the previously active version."""
    config = load(opts)
    paths = label_of(config, opts.label)
    with Announcer(config) as announce, label_lock(paths, on_wait=lambda: waiting(opts.label)):
        recover_label(config, opts.label, bootfiles.renderer(config))
        before = announce.history_length(paths)
        done = activation.rollback(paths, bootfiles.renderer(config))
        announce.activation(paths, before, "cli")
    _print_activation(opts, done)
    return 0


def cmd_versions(opts: LabelOptions) -> int:
    """List versions of a label."""
    config = load(opts)
    paths = label_of(config, opts.label)
    infos = store.list_versions(paths)
    if opts.json:
        emit_json(
            [
                {**_summary(i.manifest), "active": i.active, "rollback_target": i.rollback_target}
                for i in infos
            ]
        )
        return 0
    if not infos:
        print(f"{opts.label}: no versions yet; run `netroot build {opts.label}`")
        return 0
    rows = []
    for i in infos:
        m = i.manifest
        mark = "*" if i.active else ("<" if i.rollback_target else "")
        rows.append(
            [
                mark,
                m.version,
                m.created.strftime("%Y-%m-%d %H:%M:%S"),
                str(m.file_count),
                human_size(m.size_bytes),
                m.kernel_version,
                m.builder,
            ]
        )
    table(["", "VERSION", "CREATED (UTC)", "FILES", "SIZE", "KERNEL", "BUILDER"], rows)
    print("* active   < rollback target")
    return 0


def _activations(config: Config, label: str) -> list[tuple[str, datetime]]:
    """(version, when it became active) from the label's history, for the gc guard."""
    out = []
    for entry in store.read_history(label_paths(config, label)):
        try:
            at = datetime.strptime(entry.time, STAMP_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            at = datetime.min.replace(tzinfo=UTC)  # unreadable: never let it unprotect a version
        out.append((entry.version, at))
    return out


def cmd_gc(opts: GcOptions) -> int:
    """Prune old versions."""
    config = load(opts)
    paths = label_of(config, opts.label)
    keep = config.label(opts.label).keep_versions
    # The daemon's nodes table, when it has one: never prune what a live node runs.
    guard: gc.InUseGuard = (
        NodeGuard(db_path(config), functools.partial(_activations, config))
        if db_path(config).exists()
        else gc.NoNodes()
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(label_lock(paths, on_wait=lambda: waiting(opts.label)))
        # On a full disk links may not be re-pointable: gc still frees the space.
        recovered = recover_label(config, opts.label, bootfiles.renderer(config), strict=False)
        if recovered.problem:
            print(f"netroot: warning: {recovered.problem}", file=sys.stderr)
        if opts.dry_run:
            reasons = gc.protected_versions(paths, guard)
            pruned = gc.select_prunable(store.version_ids(paths), keep=keep, protected=set(reasons))
            held = reasons
        else:
            # Space first: on a full disk the database may open only once gc has run.
            pruned, held = gc.collect(paths, keep, guard)
            bootfiles.refresh(config, paths)  # pruned versions leave exports and TFTP links
            with Announcer(config) as announce:
                announce.pruned(paths, pruned)
    if opts.json:
        emit_json({"label": opts.label, "pruned": pruned, "kept": held, "dry_run": opts.dry_run})
        return 0
    verb = "would prune" if opts.dry_run else "pruned"
    print(f"{opts.label}: {verb} {len(pruned)} version(s), keep_versions={keep}")
    for v in pruned:
        print(f"  - {v}")
    for v, why in sorted(held.items()):
        print(f"  kept {v}: {why}")
    return 0


def cmd_verify(opts: VerifyOptions) -> int:
    """Verify a version against its manifest."""
    config = load(opts)
    paths = label_of(config, opts.label)
    version = opts.version or store.active_version(paths)
    if version is None:
        raise StoreError(f"{opts.label}: no active version to verify")
    manifest = store.verify_version(paths, version, depth="deep" if opts.deep else "index")
    found = _secrets(paths, version) if opts.secrets else []
    if opts.json:
        result: dict[str, Any] = {"label": opts.label, "version": version, "ok": True}
        result["deep"] = opts.deep
        if opts.secrets:
            result["secrets"] = [{"path": "/" + f.path, "why": f.why} for f in found]
        emit_json(result)
    else:
        depth = "every file hashed" if opts.deep else "manifest, index and boot files"
        print(f"{opts.label} {version}: OK ({depth}; {manifest.file_count} entries)")
        if opts.secrets:
            print(f"{len(found)} secret-looking file(s) served to every node:")
            for f in found:
                print(f"  /{f.path}: {f.why}")
    return 0


def _secrets(paths: LabelPaths, version: str) -> list[secretscan.Finding]:
    index = treeindex.parse((paths.version(version) / store.INDEX_NAME).read_bytes())
    return secretscan.scan_tree(paths.rootfs(version), index)


def cmd_recover(opts: RecoverOptions) -> int:
    """What start-up recovery does, on demand (the daemon runs it when it starts)."""
    config = load(opts)
    labels = [label_of(config, opts.label).label] if opts.label else known_labels(config)
    results: list[Recovered] = []
    for label in labels:
        with label_lock(label_paths(config, label), on_wait=functools.partial(waiting, label)):
            recovered = recover_label(config, label, bootfiles.renderer(config), strict=False)
            results.append(recovered)
    problems = [f"{r.label}: links not re-pointed: {r.problem}" for r in results if r.problem]
    if opts.json:
        emit_json(
            [
                {"label": r.label, "active": r.active, "removed": r.removed, "problem": r.problem}
                for r in results
            ]
        )
    else:
        for r in results:
            print(f"{r.label}: active {r.active or 'none'}; removed {len(r.removed)} leftover(s)")
            for path in r.removed:
                print(f"  - {path}")
    for problem in problems:
        print(f"netroot: error: {problem}", file=sys.stderr)
    return 1 if problems else 0
