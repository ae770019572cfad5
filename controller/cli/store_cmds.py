"""activate, rollback, versions, gc, recover, verify."""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic.dataclasses import dataclass

from controller.build import secretscan
from controller.cli.canary_cmds import abort_canary, refuse_during_rollout, request_canary
from controller.cli.options import OPTIONS, Common, add_commands, command, flag, load, opt, pos
from controller.cli.output import emit_json, human_size, table
from controller.config.models import Config
from controller.core.errors import NetrootError, StoreError
from controller.core.ids import check_label
from controller.daemon.announce import STAMP_FORMAT, Announcer
from controller.daemon.db import NodeGuard, db_path
from controller.events.payloads import ActivationReason
from controller.serve import publish
from controller.store import activation, gc, treeindex
from controller.store import versions as store
from controller.store.layout import LabelPaths, label_paths
from controller.store.locking import label_lock
from controller.store.recovery import Recovered, known_labels

# A rollout's own promotion (reason canary) is the rollout's doing; a replica follows
# its primary's activations whatever its own database says.
ROLLOUT_EXEMPT: frozenset[ActivationReason] = frozenset({"canary", "replica"})


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class LabelOptions(Common):
    """A label alone: rollback, versions, install."""

    label: str = pos()


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class ActivateOptions(LabelOptions):
    """netroot activate."""

    version: str | None = pos(nargs="?")
    # The daemon's own activation of its build (or a canary rollout's promotion)
    # says so in image.activated.
    reason: Literal["auto", "cli", "canary", "replica"] = opt(
        choices=["auto", "cli", "canary", "replica"], default="cli", help=argparse.SUPPRESS
    )
    canary: int | None = opt(
        type=int,
        metavar="N",
        help="try VERSION on N live nodes of the label first (the daemon promotes it)",
    )
    canary_macs: str | None = opt(
        metavar="MAC,...", help="try VERSION on these live nodes first (instead of --canary N)"
    )
    abort_canary: bool = flag(
        "stop the label's canary rollout: its canaries go back to the active version"
    )


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class GcOptions(LabelOptions):
    """netroot gc."""

    dry_run: bool = flag("show what would be pruned")


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class RecoverOptions(Common):
    """netroot recover."""

    label: str | None = pos(nargs="?", help="default: every label")


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class VerifyOptions(LabelOptions):
    """netroot verify."""

    version: str | None = pos(nargs="?", help="default: the active version")
    deep: bool = flag("hash every file of the tree")
    secrets: bool = flag("also list private keys, password hashes and other secret-looking files")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the store commands."""
    commands = (cmd_activate, cmd_rollback, cmd_versions, cmd_gc, cmd_recover, cmd_verify)
    add_commands(sub, common, *commands)


def label_of(config: Config, label: str) -> LabelPaths:
    """The store paths of a configured label (a one-line error names a bad or unknown one)."""
    check_label(label)
    config.label(label)
    return label_paths(config, label)


def waiting(label: str) -> None:
    """Said while another build or activation of the label holds its lock."""
    print(f"netroot: waiting for another build or activation of {label}...", file=sys.stderr)


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


@command(
    "activate",
    ActivateOptions,
    help="make a version the one new boots get (default: newest)",
    description="Switches the label's export and TFTP links to the version atomically, "
    "after a durable line in the label's history; running nodes keep their version. "
    "--canary N tries it on N live nodes first and lets the daemon promote it; "
    "--abort-canary stops such a rollout.",
)
def cmd_activate(opts: ActivateOptions) -> int:
    """Activate a version."""

    if opts.abort_canary:
        if opts.version is not None or opts.canary is not None or opts.canary_macs is not None:
            raise NetrootError("activate --abort-canary: give the LABEL alone")
        config = load(opts)
        return abort_canary(config, label_of(config, opts.label).label, as_json=opts.json)
    if opts.canary is not None or opts.canary_macs is not None:
        config = load(opts)
        paths = label_of(config, opts.label)
        return request_canary(
            config,
            paths,
            opts.version,
            count=opts.canary,
            macs=opts.canary_macs,
            as_json=opts.json,
        )

    def switch(config: Config, paths: LabelPaths) -> activation.Activation:
        replication = config.replication
        if replication.role == "replica" and opts.reason != "replica":
            raise NetrootError(
                f"{config.source}: this server is a replica of {replication.primary_url}: "
                f"activate {opts.label} on the primary, and this server follows it"
            )
        return publish.activate(config, paths, opts.version)

    return _switch(opts, opts.reason, switch, "activate")


@command(
    "rollback",
    LabelOptions,
    help="return to the previously active version",
    description="Activates the version that was active before the current one, as "
    "`netroot activate` would; the current one stays in the store.",
)
def cmd_rollback(opts: LabelOptions) -> int:
    """Activate the previously active version."""
    return _switch(opts, "cli", publish.rollback, "rollback")


def _switch(
    opts: LabelOptions,
    reason: ActivationReason,
    switch: Callable[[Config, LabelPaths], activation.Activation],
    action: str,
) -> int:
    """Activate or roll back under the label's lock, announced; print what it did."""
    config = load(opts)
    paths = label_of(config, opts.label)
    with Announcer(config) as announce, label_lock(paths, on_wait=lambda: waiting(opts.label)):
        publish.recover_label(config, opts.label)
        if reason not in ROLLOUT_EXEMPT:
            refuse_during_rollout(config, opts.label, action)
        before = announce.history_length(paths)
        done = switch(config, paths)
        announce.activation(paths, before, reason)
    _print_activation(opts, done)
    return 0


@command(
    "versions",
    LabelOptions,
    help="list versions, the active one marked",
    description="Every committed version of the label, oldest first: '*' the active one, "
    "'<' the rollback target; size, files, kernel and what made it.",
)
def cmd_versions(opts: LabelOptions) -> int:
    """List versions of a label."""
    config = load(opts)
    paths = label_of(config, opts.label)
    infos = store.list_versions(paths)
    if opts.json:
        emit_json([i.as_json() for i in infos])
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


@command(
    "gc",
    GcOptions,
    help="prune old versions (keep_versions, in-use guard)",
    description="Deletes versions beyond keep_versions, never the active one, the rollback "
    "target, or one a live node still runs. --dry-run says what it would delete.",
)
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
        recovered = publish.recover_label(config, opts.label, strict=False)
        if recovered.problem:
            print(f"netroot: warning: {recovered.problem}", file=sys.stderr)
        if opts.dry_run:
            reasons = gc.protected_versions(paths, guard)
            pruned = gc.select_prunable(store.version_ids(paths), keep=keep, protected=set(reasons))
            held = reasons
        else:
            # Space first: on a full disk the database may open only once gc has run.
            pruned, held = gc.collect(paths, keep, guard)
            publish.refresh(config, paths)  # pruned versions leave exports and TFTP links
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


@command(
    "verify",
    VerifyOptions,
    help="check a version against its manifest",
    description="Checks the version's tree against its index and manifest: sizes and the "
    "index digest by default, every file hashed with --deep.",
)
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


@command(
    "recover",
    RecoverOptions,
    help="sweep crash leftovers and re-point links to the active versions",
)
def cmd_recover(opts: RecoverOptions) -> int:
    """What start-up recovery does, on demand (the daemon runs it when it starts)."""
    config = load(opts)
    labels = [label_of(config, opts.label).label] if opts.label else known_labels(config)
    results: list[Recovered] = []
    for label in labels:
        with label_lock(label_paths(config, label), on_wait=functools.partial(waiting, label)):
            recovered = publish.recover_label(config, label, strict=False)
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
