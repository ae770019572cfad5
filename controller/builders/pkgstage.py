"""The package-stage cache: the tree right after package installation (and initramfs).

Keyed by what decides that tree (backend and its version, distribution,
release, architecture, mirror, components, the sorted package set and the
digest of base/), so a recipe change touching only the post script, files,
password, locale, timezone or services reuses it instead of downloading and
installing again.

A cached tree is copied out with `cp --reflink=auto`: reflinks where the
filesystem has them, a real copy otherwise. It is deliberately not hard
linked (fsops.clone_tree's fallback): the customisation that follows runs a
user's post script, which may write files in place and would then change the
cached tree and every later build with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from controller import fsops, proc
from controller.recipes import PackageRecipe

STAMP = "stage.json"


def stage_key(
    recipe: PackageRecipe, *, backend: str, backend_version: str, base_digest: str
) -> str:
    """Digest of every input that decides the package-stage tree."""
    fields = {
        "backend": backend, "backend_version": backend_version,
        "distro": recipe.distro, "release": recipe.suite, "arch": recipe.arch,
        "mirror": recipe.mirror, "components": list(recipe.components),
        "packages": list(recipe.package_set), "base": base_digest,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def copy_tree_argv(src: Path, dst: Path) -> list[str]:
    """cp copying a whole tree, sharing blocks by reflink where the filesystem can."""
    return ["cp", "-a", "--reflink=auto", "--no-target-directory", os.fspath(src), os.fspath(dst)]


@dataclass(frozen=True)
class Stage:
    """A cached package stage."""

    path: Path
    key: str

    @property
    def rootfs(self) -> Path:
        """The cached tree."""
        return self.path / "rootfs"

    def info(self) -> dict[str, object]:
        """What was recorded when the stage was stored."""
        data: dict[str, object] = json.loads((self.path / STAMP).read_text())
        return data


class StageCache:
    """<cache_dir>/pkgstage/<key>/{rootfs/,stage.json}; stage.json marks a complete entry."""

    def __init__(self, cache_dir: Path) -> None:
        self.top = cache_dir / "pkgstage"

    def lookup(self, key: str) -> Stage | None:
        """The complete cached stage for key, if any."""
        stage = Stage(self.top / key[:32], key)
        return stage if (stage.path / STAMP).is_file() else None

    def copy_out(self, stage: Stage, rootfs: Path, log_file: Path) -> None:
        """Fill the (empty) rootfs with a private copy of the cached tree."""
        rootfs.rmdir()
        proc.run(copy_tree_argv(stage.rootfs, rootfs), log_file=log_file)

    def store(self, key: str, rootfs: Path, info: dict[str, object], log_file: Path,
              token: str) -> Stage:
        """Copy a freshly installed tree into the cache, completing it atomically."""
        stage = Stage(self.top / key[:32], key)
        tmp = self.top / f".tmp-{token}"
        fsops.remove_tree(tmp)
        tmp.mkdir(parents=True)
        try:
            proc.run(copy_tree_argv(rootfs, tmp / "rootfs"), log_file=log_file)
            stamp = {**info, "key": key, "stored": datetime.now(UTC).isoformat()}
            fsops.write_atomic(tmp / STAMP, json.dumps(stamp, indent=2).encode() + b"\n")
            fsops.remove_tree(stage.path)  # an incomplete leftover of a killed build
            try:
                os.rename(tmp, stage.path)
            except OSError:
                if self.lookup(key) is None:  # a concurrent build may have won the race
                    raise
        finally:
            fsops.remove_tree(tmp)
        return stage


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock on path (created), held for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
