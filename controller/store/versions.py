"""Reading the store: versions, manifests, the active version, verification."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from controller.core.errors import StoreError, VerifyError
from controller.core.ids import is_store_version
from controller.core.model import first_error
from controller.store import history, treeindex
from controller.store.layout import LabelPaths
from controller.store.manifest import BootArtifact, Manifest

INDEX_NAME = "files.idx"


@dataclass(frozen=True)
class VersionInfo:
    """A committed version as listed by `netroot versions`."""

    manifest: Manifest
    active: bool
    rollback_target: bool

    def as_json(self) -> dict[str, Any]:
        """The row of `netroot versions --json` and of the HTTP API: the manifest, marked."""
        row: dict[str, Any] = self.manifest.model_dump(mode="json")
        return {**row, "active": self.active, "rollback_target": self.rollback_target}


def version_ids(paths: LabelPaths) -> list[str]:
    """Committed versions of a label, oldest first."""
    try:
        names = os.listdir(paths.images)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if is_store_version(n))


def read_manifest(paths: LabelPaths, version: str) -> Manifest:
    """A version's manifest; StoreError when the version does not exist."""
    if not is_store_version(version):
        # Never a path: `verify LABEL /abs/path` must not read outside the store.
        known = ", ".join(version_ids(paths)[-5:]) or "none built yet"
        raise StoreError(f"{paths.label}: {version!r} is not a version id (latest: {known})")
    try:
        data = paths.manifest(version).read_bytes()
    except FileNotFoundError:
        known = ", ".join(version_ids(paths)[-5:]) or "none built yet"
        raise StoreError(f"{paths.label}: no version {version!r} (latest: {known})") from None
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        err = first_error(exc)
        problem = f"{err.field}: {err.in_file}" if err.field else err.in_file
        raise VerifyError(f"{paths.manifest(version)}: invalid manifest: {problem}") from None


def read_history(paths: LabelPaths) -> list[history.Entry]:
    """The label's activation history (a torn last line is ignored)."""
    try:
        return history.parse(paths.history.read_text())
    except FileNotFoundError:
        return []


def rollback_stack(paths: LabelPaths) -> list[str]:
    """Active version last, the one a rollback returns to before it."""
    return history.replay(read_history(paths), exists=set(version_ids(paths)))


def active_version(paths: LabelPaths) -> str | None:
    """The version new boots get, per the history."""
    stack = rollback_stack(paths)
    return stack[-1] if stack else None


def list_versions(paths: LabelPaths) -> list[VersionInfo]:
    """Every committed version with its manifest, oldest first."""
    stack = rollback_stack(paths)
    active = stack[-1] if stack else None
    target = stack[-2] if len(stack) > 1 else None
    return [
        VersionInfo(read_manifest(paths, v), v == active, v == target) for v in version_ids(paths)
    ]


def _check_artifact(boot: Path, artifact: BootArtifact, deep: bool) -> None:
    path = boot / artifact.name
    try:
        st = path.stat()
    except FileNotFoundError:
        raise VerifyError(f"{path}: boot artifact missing") from None
    if st.st_size != artifact.size:
        raise VerifyError(f"{path}: size {st.st_size}, manifest says {artifact.size}")
    if deep and treeindex.file_sha256(path) != artifact.sha256:
        raise VerifyError(f"{path}: sha256 differs from the manifest")


Depth = Literal["activation", "index", "deep"]


def verify_tree(directory: Path, manifest: Manifest, *, depth: Depth) -> None:
    """Check a version directory (committed or staged) against its manifest.

    activation: constant time, whatever the image size: rootfs, index and boot
    artifacts present with the manifest's sizes (completeness itself is
    guaranteed by verify-before-rename). index: the index hashes to the
    manifest's tree digest and has its entry count. deep: every file hashed
    and the tree compared with the index.
    """
    index_file = directory / INDEX_NAME
    if not index_file.is_file():
        raise VerifyError(f"{directory}: {INDEX_NAME} missing")
    if not (directory / "rootfs").is_dir():
        raise VerifyError(f"{directory}: rootfs missing")
    for artifact in (manifest.kernel, manifest.initrd):
        _check_artifact(directory / "boot", artifact, deep=depth == "deep")
    if depth == "activation":
        return
    index_bytes = index_file.read_bytes()
    if treeindex.digest(index_bytes) != manifest.tree_digest:
        raise VerifyError(f"{directory}: {INDEX_NAME} does not match the manifest's tree digest")
    count = index_bytes.count(b"\n")
    if count != manifest.file_count:
        raise VerifyError(f"{directory}: index has {count} entries, manifest {manifest.file_count}")
    if depth == "deep":
        actual = treeindex.render(treeindex.scan(directory / "rootfs"))
        treeindex.compare(index_bytes, actual, str(directory / "rootfs"))


def verify_base(directory: Path) -> None:
    """Deep check of a cached base tree (rootfs and files.idx): every file hashed.

    A cache is only ever cloned into versions, but an older netroot hard-linked it
    into rw versions whose nodes write in place: before such a cache seeds another
    rw version its content must still be what its index says.
    """
    try:
        index_bytes = (directory / INDEX_NAME).read_bytes()
    except FileNotFoundError:
        raise VerifyError(f"{directory}: {INDEX_NAME} missing") from None
    if not (directory / "rootfs").is_dir():
        raise VerifyError(f"{directory}: rootfs missing")
    actual = treeindex.render(treeindex.scan(directory / "rootfs"))
    treeindex.compare(index_bytes, actual, str(directory / "rootfs"))


def verify_version(paths: LabelPaths, version: str, *, depth: Depth = "index") -> Manifest:
    """Verify a committed version; returns its manifest."""
    manifest = read_manifest(paths, version)
    if manifest.version != version or manifest.label != paths.label:
        raise VerifyError(
            f"{paths.manifest(version)}: manifest names {manifest.label}/{manifest.version}"
        )
    verify_tree(paths.version(version), manifest, depth=depth)
    return manifest
