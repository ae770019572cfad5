"""The package-stage cache: the tree right after package installation (and initramfs).

Keyed by what decides that tree (backend and its version, distribution,
release, architecture, mirror, components, the sorted package set and the
digest of base/), so a recipe change touching only the post script, files,
password, locale, timezone or services reuses it instead of downloading and
installing again.

A cached tree is cloned (fsops.clone_tree's argv: reflinks where the
filesystem has them, hard links otherwise), in and out, so storing and
reusing it costs seconds and no disk. The customisation that follows runs
every in-image command copy-on-write (controller.build.builders.cow): a post script
that writes a file in place changes a new inode, never the cached tree nor
the versions that share it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from controller.build.builders import basetree
from controller.core import proc
from controller.core.errors import RecipeError
from controller.core.flock import file_lock
from controller.recipes import PackageRecipe
from controller.store import fsops

STAMP = "stage.json"


def stage_key(
    recipe: PackageRecipe, *, backend: str, backend_version: str, base_digest: str
) -> str:
    """Digest of every input that decides the package-stage tree."""
    fields = {
        "backend": backend,
        "backend_version": backend_version,
        "distro": recipe.distro,
        "release": recipe.suite,
        "arch": recipe.arch,
        "mirror": recipe.mirror,
        "components": list(recipe.components),
        "packages": list(recipe.package_set),
        "base": base_digest,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def copy_tree_argv(src: Path, dst: Path) -> list[str]:
    """cp copying a whole tree, sharing blocks by reflink where the filesystem can."""
    return ["cp", "-a", "--reflink=auto", "--no-target-directory", os.fspath(src), os.fspath(dst)]


def clone_into(src: Path, dst: Path, log_file: Path) -> None:
    """Clone src to (absent) dst on one filesystem; copy across filesystems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.stat().st_dev == dst.parent.stat().st_dev:
        argv = fsops.clone_tree_argv(src, dst, reflink=fsops.reflinks_supported(dst.parent))
    else:
        argv = copy_tree_argv(src, dst)
    proc.run(argv, log_file=log_file)


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
        """Fill the (empty) rootfs with a clone of the cached tree."""
        rootfs.rmdir()
        # shared: no store replaces the stage meanwhile
        with file_lock(self.top / ".lock", mode=0o644, shared=True):
            clone_into(stage.rootfs, rootfs, log_file)

    def store(
        self, key: str, rootfs: Path, info: dict[str, object], log_file: Path, token: str
    ) -> Stage:
        """Copy a freshly installed tree into the cache, completing it atomically."""
        stage = Stage(self.top / key[:32], key)
        with file_lock(self.top / ".lock", mode=0o644):
            # under the lock no other store is running: any .tmp-* is a killed build's
            for leftover in self.top.glob(".tmp-*"):
                fsops.remove_tree(leftover)
            tmp = self.top / f".tmp-{token}"
            tmp.mkdir(parents=True)
            try:
                clone_into(rootfs, tmp / "rootfs", log_file)
                stamp = {**info, "key": key, "stored": datetime.now(UTC).isoformat()}
                fsops.write_atomic(tmp / STAMP, json.dumps(stamp, indent=2).encode() + b"\n")
                fsops.remove_tree(stage.path)  # replaced by a --rebuild
                os.rename(tmp, stage.path)
            finally:
                fsops.remove_tree(tmp)
        return stage


def path_digest(path: Path) -> str:
    """Content digest of a file or a directory tree (names, modes, content, link targets)."""
    h = hashlib.sha256()
    paths = [path]
    if path.is_dir() and not path.is_symlink():
        paths += sorted(p for p in path.rglob("*"))
    for p in paths:
        st = p.lstat()
        h.update(f"{p.relative_to(path)}\0{st.st_mode:o}\0".encode())
        if p.is_symlink():
            h.update(os.readlink(p).encode())
        elif p.is_file():
            with p.open("rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def recipe_digest(recipe: PackageRecipe, source: str) -> str:
    """The merged recipe plus the content of every file it copies in."""
    files = []
    for copy in recipe.files:
        if not copy.src.exists():
            raise RecipeError(source, "files", f"{copy.src} does not exist")
        files.append(path_digest(copy.src))
    payload = json.dumps([recipe.model_dump(mode="json"), files], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def input_key(
    backend: str, backend_version: str, recipe: PackageRecipe, recipe_path: Path, base_dir: Path
) -> str:
    """A package backend's input key: the merged recipe, the files it copies in, base/
    and the backend itself."""
    base = basetree.digest(basetree.scan(base_dir))
    content = recipe_digest(recipe, str(recipe_path))
    payload = [backend, backend_version, content, base]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()
