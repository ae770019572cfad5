"""Garbage collection: which versions may go, and removing them safely."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from typing import Protocol

from controller.store import fsops
from controller.store import versions as store
from controller.store.layout import LabelPaths


class InUseGuard(Protocol):
    """Tells which versions of a label live nodes still run (the node tracker fills it)."""

    def versions_in_use(self, label: str) -> set[str]:
        """Versions that must not be pruned."""
        ...


class NoNodes:
    """Guard used until nodes are tracked: nothing is reported in use."""

    def versions_in_use(self, label: str) -> set[str]:
        """No node is known, so no version is in use."""
        return set()


def select_prunable(versions: Sequence[str], *, keep: int, protected: set[str]) -> list[str]:
    """Versions beyond the newest `keep`, minus the protected ones. Pure."""
    newest = set(sorted(versions)[-keep:]) if keep > 0 else set()
    return [v for v in sorted(versions) if v not in newest and v not in protected]


def protected_versions(paths: LabelPaths, guard: InUseGuard) -> dict[str, str]:
    """Versions gc must keep whatever keep_versions says, with the reason."""
    reasons: dict[str, str] = {}
    stack = store.rollback_stack(paths)
    if stack:
        reasons[stack[-1]] = "active"
    if len(stack) > 1:
        reasons.setdefault(stack[-2], "rollback target")
    for version in guard.versions_in_use(paths.label):
        reasons.setdefault(version, "in use by a live node")
    return reasons


def remove_version(paths: LabelPaths, version: str) -> None:
    """Move the version into staging (one rename: it is gone at once), then delete it."""
    paths.staging.mkdir(parents=True, exist_ok=True)
    doomed = paths.staging / f"gc-{version}-{uuid.uuid4().hex[:6]}"
    os.rename(paths.version(version), doomed)
    fsops.fsync_dir(paths.images)
    fsops.remove_tree(doomed)


def prune_bases(paths: LabelPaths) -> list[str]:
    """Remove cached base trees that no remaining version was built from."""
    if not paths.bases.is_dir():
        return []
    used = {
        paths.base_name(store.read_manifest(paths, v).base_key) for v in store.version_ids(paths)
    }
    removed = []
    for name in sorted(os.listdir(paths.bases)):
        if name not in used:
            doomed = paths.staging / f"gc-base-{name}-{uuid.uuid4().hex[:6]}"
            paths.staging.mkdir(parents=True, exist_ok=True)
            os.rename(paths.bases / name, doomed)
            fsops.remove_tree(doomed)
            removed.append(name)
    return removed


def collect(paths: LabelPaths, keep: int, guard: InUseGuard) -> tuple[list[str], dict[str, str]]:
    """Prune the label; returns (pruned versions, kept-despite-age versions with reasons)."""
    versions = store.version_ids(paths)
    reasons = protected_versions(paths, guard)
    pruned = select_prunable(versions, keep=keep, protected=set(reasons))
    for version in pruned:
        remove_version(paths, version)
    prune_bases(paths)
    older = set(sorted(versions)[:-keep]) if keep > 0 else set(versions)
    held = {v: r for v, r in reasons.items() if v in older}
    return pruned, held
