"""The `import` builder: adopt an existing root tree, a directory or a tar archive."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from controller.build.builders import BuildRequest, Progress, basetree
from controller.core import proc
from controller.core.errors import RecipeError
from controller.recipes import ImportRecipe, Recipe


def tar_extract_argv(archive: Path, dest: Path) -> list[str]:
    """GNU tar keeping owners, modes, xattrs and ACLs as root would (never '..' members)."""
    extras = ("--xattrs", "--xattrs-include=*", "--acls", "--delay-directory-restore")
    return basetree.tar_extract_argv(archive, dest, *extras)


def copy_tree_argv(source: Path, dest: Path) -> list[str]:
    """cp keeping everything of a directory tree, symlinks copied as symlinks."""
    return ["cp", "-a", "--no-target-directory", os.fspath(source), os.fspath(dest)]


def _directory_fingerprint(source: Path) -> str:
    """Cheap identity of a directory tree: every entry's type, mode, owner, size and mtime."""
    h = hashlib.sha256()
    pending = [os.fspath(source)]
    while pending:
        directory = pending.pop()
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            st = entry.stat(follow_symlinks=False)  # the lstat scandir already made
            h.update(
                f"{entry.path}\0{st.st_mode}\0{st.st_uid}\0{st.st_gid}\0"
                f"{st.st_size}\0{st.st_mtime_ns}\n".encode()
            )
            if entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)
    return h.hexdigest()


def _archive_digest(source: Path) -> str:
    with source.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class ImportBuilder:
    """Copies or extracts the recipe's source into the staging rootfs."""

    name = "import"

    def input_key(self, recipe: Recipe, recipe_path: Path) -> str:
        """The source's identity: content hash of an archive, a stat walk of a directory."""
        source = self._source(recipe, recipe_path)
        ident = _directory_fingerprint(source) if source.is_dir() else _archive_digest(source)
        payload = json.dumps([recipe.model_dump(mode="json"), ident], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    @staticmethod
    def _source(recipe: Recipe, recipe_path: Path) -> Path:
        if not isinstance(recipe, ImportRecipe):
            raise TypeError(f"import builder got a {recipe.builder} recipe")
        source = recipe.source
        if source.is_dir():
            return source
        if not source.is_file():
            raise RecipeError(
                str(recipe_path),
                "source",
                f"{source} does not exist",
                "a directory or a tar archive",
            )
        return source

    def build(self, request: BuildRequest, progress: Progress) -> None:
        """Copy a directory or extract an archive into request.rootfs."""
        source = self._source(request.recipe, request.recipe_path)
        if source.is_dir():
            progress(f"copying {source}")
            request.rootfs.rmdir()  # cp creates it with the source's metadata
            proc.run(copy_tree_argv(source, request.rootfs), log_file=request.log_file)
        else:
            progress(f"extracting {source}")
            proc.run(tar_extract_argv(source, request.rootfs), log_file=request.log_file)
