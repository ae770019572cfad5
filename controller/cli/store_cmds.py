"""validate, build, activate, rollback, versions, gc, verify."""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.build import nodeside, secretscan
from controller.build.overlays import scan_overlays
from controller.build.pipeline import new_build_id, run_build
from controller.cli.output import Progress, emit_json, human_size, table
from controller.config.models import Config, load_config
from controller.core.errors import BuildError
from controller.core.ids import check_label
from controller.daemon.announce import STAMP_FORMAT, Announcer
from controller.daemon.db import NodeGuard, db_path
from controller.events.payloads import ActivationReason, BuildKind
from controller.recipes import load_recipe
from controller.serve import bootfiles
from controller.store import activation, gc, treeindex
from controller.store import versions as store
from controller.store.layout import LabelPaths, label_paths
from controller.store.locking import label_lock
from controller.store.manifest import Manifest
from controller.store.recovery import Recovered, known_labels, recover_label

Sub = "argparse._SubParsersAction[argparse.ArgumentParser]"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the store commands."""
    p = sub.add_parser(
        "validate", parents=[common], help="check the config and every recipe it names"
    )
    p.add_argument(
        "--insecure-test-password",
        action="store_true",
        help="accept plaintext root_password in recipes (throw-away VM tests only)",
    )
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("build", parents=[common], help="build a new version of a label")
    p.add_argument("label")
    p.add_argument("--activate", action="store_true", help="activate the version on success")
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="run the builder even if the cached base tree matches the inputs",
    )
    p.add_argument(
        "--insecure-test-password",
        action="store_true",
        help="accept plaintext root_password in recipes (throw-away VM tests only)",
    )
    p.add_argument(
        "--overlays-only",
        action="store_true",
        help="only overlays changed: reuse the active version's base without re-checking "
        "the recipe's inputs (what the daemon does for an overlay edit)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="make a new version even when it is identical to the active one",
    )
    # Set by the daemon for its child builds: the build it queued (the id names the
    # log file and every event of the build).
    p.add_argument("--build-id", help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_build)

    p = sub.add_parser(
        "activate", parents=[common], help="make a version the one new boots get (default: newest)"
    )
    p.add_argument("label")
    p.add_argument("version", nargs="?")
    # The daemon's own activation of its build says so in image.activated.
    p.add_argument("--reason", choices=["auto", "cli"], default="cli", help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_activate)

    p = sub.add_parser("rollback", parents=[common], help="return to the previously active version")
    p.add_argument("label")
    p.set_defaults(handler=cmd_rollback)

    p = sub.add_parser("versions", parents=[common], help="list versions, the active one marked")
    p.add_argument("label")
    p.set_defaults(handler=cmd_versions)

    p = sub.add_parser(
        "gc", parents=[common], help="prune old versions (keep_versions, in-use guard)"
    )
    p.add_argument("label")
    p.add_argument("--dry-run", action="store_true", help="show what would be pruned")
    p.set_defaults(handler=cmd_gc)

    p = sub.add_parser(
        "recover",
        parents=[common],
        help="sweep crash leftovers and re-point links to the active versions",
    )
    p.add_argument("label", nargs="?", help="default: every label")
    p.set_defaults(handler=cmd_recover)

    p = sub.add_parser("verify", parents=[common], help="check a version against its manifest")
    p.add_argument("label")
    p.add_argument("version", nargs="?", help="default: the active version")
    p.add_argument("--deep", action="store_true", help="hash every file of the tree")
    p.add_argument(
        "--secrets",
        action="store_true",
        help="also list private keys, password hashes and other secret-looking files",
    )
    p.set_defaults(handler=cmd_verify)


def _config(args: argparse.Namespace) -> Config:
    return load_config(Path(args.config) if args.config else None)


def _label(args: argparse.Namespace, config: Config) -> LabelPaths:
    check_label(args.label)
    config.label(args.label)
    return label_paths(config, args.label)


def _waiting(label: str) -> None:
    print(f"netroot: waiting for another build or activation of {label}...", file=sys.stderr)


def _summary(m: Manifest) -> dict[str, Any]:
    return m.model_dump(mode="json")


def cmd_validate(args: argparse.Namespace) -> int:
    """Load the config, every recipe and every overlay; change nothing."""
    config = _config(args)
    bootfiles.check_servable(config)  # what validate accepts can be activated
    rows, report = [], {}
    warned: dict[str, list[str]] = {}
    for name in sorted(config.labels):
        recipe = load_recipe(
            config.recipe_path(name), allow_plaintext_password=args.insecure_test_password
        )
        overlays = [config.overlays_dir / o for o in config.overlay_names(name)]
        items = scan_overlays(overlays)
        warnings = warned[name] = nodeside.recipe_warnings(recipe, config.recipe_path(name))
        report[name] = {
            "warnings": warnings,
            "recipe": str(config.recipe_path(name)),
            "builder": recipe.builder,
            "overlay_entries": len(items),
        }
        rows.append([name, recipe.builder, str(config.recipe_path(name)), str(len(items))])
    if args.json:
        emit_json({"config": config.source, "valid": True, "labels": report})
    else:
        print(f"{config.source}: valid, {len(config.labels)} label(s)")
        if rows:
            table(["LABEL", "BUILDER", "RECIPE", "OVERLAY ENTRIES"], rows)
    for name, warnings in warned.items():
        for warning in warnings:
            print(f"netroot: warning: {name}: {warning}", file=sys.stderr)
    return 0


def _build_reason(args: argparse.Namespace) -> str:
    flags = [f for f in ("activate", "rebuild", "overlays_only") if getattr(args, f)]
    return " ".join(["netroot build", *(f"--{f.replace('_', '-')}" for f in flags)])


def cmd_build(args: argparse.Namespace) -> int:
    """Build (and optionally activate) a new version; each step is announced on the bus."""
    config = _config(args)
    paths = _label(args, config)
    # a bad recipe fails before anything is written
    load_recipe(
        config.recipe_path(args.label), allow_plaintext_password=args.insecure_test_password
    )
    scan_overlays([config.overlays_dir / o for o in config.overlay_names(args.label)])
    bootfiles.check_servable(config)  # a version that could not be served is not built
    progress = Progress(quiet=args.json)
    kind: BuildKind = "overlay" if args.overlays_only else "full"
    with Announcer(config) as announce, label_lock(paths, on_wait=lambda: _waiting(args.label)):
        recover_label(config, args.label, bootfiles.renderer(config))
        row = announce.build_started(
            args.label, args.build_id or new_build_id(), kind, _build_reason(args)
        )
        started = time.monotonic()
        try:
            manifest = run_build(
                config,
                args.label,
                progress=progress,
                rebuild=args.rebuild,
                overlays_only=args.overlays_only,
                insecure_test_password=args.insecure_test_password,
                build_id=row.build_id,
                force=args.force,
            )
        except BuildError as exc:
            tail = exc.log_tail
            announce.build_failed(row, exc.step, str(exc), tail, time.monotonic() - started)
            raise
        except KeyboardInterrupt:
            announce.build_failed(row, "interrupted", "interrupted", "", time.monotonic() - started)
            raise
        announce.build_succeeded(row, manifest, time.monotonic() - started)
        done: activation.Activation | None = None
        unchanged = manifest.version == store.active_version(paths)
        if args.activate and not unchanged:
            before = announce.history_length(paths)
            done = activation.activate(paths, manifest.version, bootfiles.renderer(config))
            announce.activation(paths, before, "cli")
    if args.json:
        emit_json(
            {"version": _summary(manifest), "activated": done is not None, "unchanged": unchanged}
        )
    elif unchanged:
        print(
            f"unchanged: {args.label} {manifest.version} (active) has the same content;"
            " no new version (--force makes one)"
        )
    else:
        print(
            f"built {args.label} {manifest.version}: {manifest.file_count} entries, "
            f"{human_size(manifest.size_bytes)}, kernel {manifest.kernel_version}"
        )
        if done:
            print(f"activated {args.label} {done.version} (was {done.previous or 'none'})")
    return 0


def _print_activation(args: argparse.Namespace, done: activation.Activation) -> None:
    if args.json:
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


def cmd_activate(args: argparse.Namespace) -> int:
    """Activate a version."""
    config = _config(args)
    paths = _label(args, config)
    reason: ActivationReason = "auto" if args.reason == "auto" else "cli"
    with Announcer(config) as announce, label_lock(paths, on_wait=lambda: _waiting(args.label)):
        recover_label(config, args.label, bootfiles.renderer(config))
        before = announce.history_length(paths)
        done = activation.activate(paths, args.version, bootfiles.renderer(config))
        announce.activation(paths, before, reason)
    _print_activation(args, done)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Activate the previously active version."""
    config = _config(args)
    paths = _label(args, config)
    with Announcer(config) as announce, label_lock(paths, on_wait=lambda: _waiting(args.label)):
        recover_label(config, args.label, bootfiles.renderer(config))
        before = announce.history_length(paths)
        done = activation.rollback(paths, bootfiles.renderer(config))
        announce.activation(paths, before, "cli")
    _print_activation(args, done)
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    """List versions of a label."""
    config = _config(args)
    paths = _label(args, config)
    infos = store.list_versions(paths)
    if args.json:
        emit_json(
            [
                {**_summary(i.manifest), "active": i.active, "rollback_target": i.rollback_target}
                for i in infos
            ]
        )
        return 0
    if not infos:
        print(f"{args.label}: no versions yet; run `netroot build {args.label}`")
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


def cmd_gc(args: argparse.Namespace) -> int:
    """Prune old versions."""
    config = _config(args)
    paths = _label(args, config)
    keep = config.label(args.label).keep_versions
    # The daemon's nodes table, when it has one: never prune what a live node runs.
    guard: gc.InUseGuard = (
        NodeGuard(db_path(config), functools.partial(_activations, config))
        if db_path(config).exists()
        else gc.NoNodes()
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(label_lock(paths, on_wait=lambda: _waiting(args.label)))
        # On a full disk links may not be re-pointable: gc still frees the space.
        recovered = recover_label(config, args.label, bootfiles.renderer(config), strict=False)
        if recovered.problem:
            print(f"netroot: warning: {recovered.problem}", file=sys.stderr)
        if args.dry_run:
            reasons = gc.protected_versions(paths, guard)
            pruned = gc.select_prunable(store.version_ids(paths), keep=keep, protected=set(reasons))
            held = reasons
        else:
            # Space first: on a full disk the database may open only once gc has run.
            pruned, held = gc.collect(paths, keep, guard)
            bootfiles.refresh(config, paths)  # pruned versions leave exports and TFTP links
            with Announcer(config) as announce:
                announce.pruned(paths, pruned)
    if args.json:
        emit_json({"label": args.label, "pruned": pruned, "kept": held, "dry_run": args.dry_run})
        return 0
    verb = "would prune" if args.dry_run else "pruned"
    print(f"{args.label}: {verb} {len(pruned)} version(s), keep_versions={keep}")
    for v in pruned:
        print(f"  - {v}")
    for v, why in sorted(held.items()):
        print(f"  kept {v}: {why}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a version against its manifest."""
    config = _config(args)
    paths = _label(args, config)
    version = args.version or store.active_version(paths)
    if version is None:
        print(f"netroot: error: {args.label}: no active version to verify", file=sys.stderr)
        return 1
    manifest = store.verify_version(paths, version, depth="deep" if args.deep else "index")
    found = _secrets(paths, version) if args.secrets else []
    if args.json:
        result: dict[str, Any] = {"label": args.label, "version": version, "ok": True}
        result["deep"] = args.deep
        if args.secrets:
            result["secrets"] = [{"path": "/" + f.path, "why": f.why} for f in found]
        emit_json(result)
    else:
        depth = "every file hashed" if args.deep else "manifest, index and boot files"
        print(f"{args.label} {version}: OK ({depth}; {manifest.file_count} entries)")
        if args.secrets:
            print(f"{len(found)} secret-looking file(s) served to every node:")
            for f in found:
                print(f"  /{f.path}: {f.why}")
    return 0


def _secrets(paths: LabelPaths, version: str) -> list[secretscan.Finding]:
    index = treeindex.parse((paths.version(version) / store.INDEX_NAME).read_bytes())
    return secretscan.scan_tree(paths.rootfs(version), index)


def cmd_recover(args: argparse.Namespace) -> int:
    """What start-up recovery does, on demand (the daemon runs it when it starts)."""
    config = _config(args)
    labels = [_label(args, config).label] if args.label else known_labels(config)
    results: list[Recovered] = []
    for label in labels:
        with label_lock(label_paths(config, label), on_wait=functools.partial(_waiting, label)):
            recovered = recover_label(config, label, bootfiles.renderer(config), strict=False)
            results.append(recovered)
    problems = [f"{r.label}: links not re-pointed: {r.problem}" for r in results if r.problem]
    if args.json:
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
