"""Read a recipe file into its model, with one-line errors naming file and field.

A native recipe may `extends = "other.toml"` (relative to itself): the chain is
merged from the root down, packages and services as unions, files and post
scripts concatenated in order, every other key taken from the last file that
sets it. Each error names the file that set the offending key.

The loader also says which files a recipe reads (`load_with_inputs`,
`recipe_inputs`): every recipe file it opened (the `extends` chain, a .def,
the TOML naming a .def) and the sources the recipe copies or imports. The
watcher rebuilds a label when one of them changes; the builders' input keys
hash the same files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from controller.core.errors import NetrootError, RecipeError
from controller.core.model import first_error, read_toml
from controller.recipes import distros
from controller.recipes.inputs import source_files
from controller.recipes.legacy_def import load_def
from controller.recipes.models import BUILDERS, DefRecipe, Recipe

_ADAPTER: TypeAdapter[Recipe] = TypeAdapter(Recipe)
DEF_BUILDERS = ("def", "apptainer", "singularity")
MAX_EXTENDS_DEPTH = 8
_UNION_KEYS = ("packages",)
_CONCAT_KEYS = ("files",)
PLAINTEXT_ALLOWED = "root_password_hash (a crypt hash), or --insecure-test-password for VM tests"


def _first_error(exc: ValidationError, origin: dict[str, str], source: str) -> RecipeError:
    err = first_error(exc)
    loc = err.loc[1:] if err.loc and err.loc[0] in BUILDERS else err.loc
    # (the discriminated union puts the builder's tag first)
    field = ".".join(loc)
    where = origin.get(loc[0], source) if loc else source
    if err.kind in ("union_tag_invalid", "literal_error") and field in ("", "builder"):
        return RecipeError(where, "builder", "unknown builder", ", ".join(BUILDERS))
    if err.kind == "literal_error":
        return RecipeError(where, field, f"{err.input!r} is not allowed here", err.expected)
    return RecipeError(where, field, err.in_file)


def _read_toml(path: Path) -> dict[str, Any]:
    return read_toml(path, "recipe file", RecipeError)


def _absolute_sources(data: dict[str, Any], root: Path) -> dict[str, Any]:
    """Paths in a file are relative to that file's directory."""
    out = dict(data)
    if isinstance(out.get("source"), str):
        out["source"] = str(root / out["source"])
    if isinstance(out.get("files"), list):
        out["files"] = [
            {**f, "src": str(root / f["src"])}
            if isinstance(f, dict) and isinstance(f.get("src"), str)
            else f
            for f in out["files"]
        ]
    return out


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """child over base: unions, concatenations, then last writer wins."""
    out = dict(base)
    for key, value in child.items():
        old = out.get(key)
        if key in _UNION_KEYS and isinstance(old, list) and isinstance(value, list):
            out[key] = old + [v for v in value if v not in old]
        elif key in _CONCAT_KEYS and isinstance(old, list) and isinstance(value, list):
            out[key] = old + value
        elif key == "post" and isinstance(old, str) and isinstance(value, str):
            out[key] = old.rstrip("\n") + "\n" + value if old.strip() else value
        elif key == "services" and isinstance(old, dict) and isinstance(value, dict):
            out[key] = {**old, **value}
            for kind in ("enable", "disable"):
                if isinstance(old.get(kind), list) and isinstance(value.get(kind), list):
                    out[key][kind] = list(dict.fromkeys([*old[kind], *value[kind]]))
        else:
            out[key] = value
    return out


def _check_password(data: dict[str, Any], source: str, allow_plaintext: bool) -> None:
    if "root_password" in data and not allow_plaintext:
        raise RecipeError(
            source, "root_password", "a plaintext password is refused", PLAINTEXT_ALLOWED
        )


def _load_chain(
    path: Path, allow_plaintext: bool, seen: tuple[Path, ...], reads: list[Path]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Merged data of path and everything it extends, with the file that set each key."""
    source = str(path)
    reads.append(path)  # before reading: creating a missing parent changes the recipe
    data = _read_toml(path)
    _check_password(data, source, allow_plaintext)
    data = _absolute_sources(data, path.resolve().parent)
    parent_ref = data.pop("extends", None)
    if parent_ref is None:
        return data, dict.fromkeys(data, source)
    if not isinstance(parent_ref, str) or not parent_ref:
        raise RecipeError(source, "extends", "must be a recipe file name")
    parent = path.parent / parent_ref
    if parent.resolve() in seen or len(seen) >= MAX_EXTENDS_DEPTH:
        raise RecipeError(
            source,
            "extends",
            f"{parent_ref} extends back into a recipe of its own chain (or the chain is too deep)",
        )
    if not parent.is_file():
        reads.append(parent)
        raise RecipeError(source, "extends", f"{parent} not found")
    if parent.suffix == ".def":
        raise RecipeError(
            source, "extends", f"{parent_ref} is a legacy .def recipe", "a TOML recipe"
        )
    base, origin = _load_chain(parent, allow_plaintext, (*seen, parent.resolve()), reads)
    if base.get("builder", "") == "import" or "source" in base:
        raise RecipeError(
            source,
            "extends",
            f"{parent_ref} is an import recipe",
            "a recipe with distro and packages",
        )
    if "root_password" in data:
        base.pop("root_password_hash", None)  # the child's password replaces the parent's
    elif "root_password_hash" in data:
        base.pop("root_password", None)
    return _merge(base, data), {**origin, **dict.fromkeys(data, source)}


def _with_builder(data: dict[str, Any], origin: dict[str, str], source: str) -> dict[str, Any]:
    """A native recipe without `builder` gets the one its distro uses; else `import`."""
    if "builder" in data:
        return data
    distro = data.get("distro")
    if isinstance(distro, str):
        try:
            return {"builder": distros.builder_for(distro), **data}
        except ValueError as exc:
            raise RecipeError(origin.get("distro", source), "distro", str(exc)) from None
    return {"builder": "import", **data}


def parse_recipe(
    data: dict[str, Any],
    *,
    source: str,
    root: Path,
    allow_plaintext_password: bool = False,
    origin: dict[str, str] | None = None,
) -> Recipe:
    """Validate recipe data; relative paths are taken relative to root (the recipe's dir)."""
    origin = origin or {}
    _check_password(data, origin.get("root_password", source), allow_plaintext_password)
    data = _with_builder(_absolute_sources(data, root), origin, source)
    if data.get("root_password") is not None and data.get("root_password_hash") is not None:
        raise RecipeError(
            origin.get("root_password", source),
            "root_password",
            "give either root_password or root_password_hash, not both",
        )
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise _first_error(exc, origin, source) from None


def _definition(data: dict[str, Any], path: Path, reads: list[Path]) -> DefRecipe:
    """A TOML recipe naming a .def and the tool that builds it (netroot, apptainer...)."""
    source = str(path)
    extra = sorted(set(data) - {"builder", "definition"})
    if extra:
        raise RecipeError(source, extra[0], "unknown field", "builder, definition")
    ref = data.get("definition")
    if not isinstance(ref, str) or not ref.endswith(".def"):
        raise RecipeError(
            source,
            "definition",
            "required: the .def file to build",
            "a path ending in .def, relative to this recipe",
        )
    reads.append(path.parent / ref)
    recipe = load_def(path.parent / ref)
    return recipe.model_copy(update={"builder": data["builder"]})


def _load(path: Path, allow_plaintext_password: bool, reads: list[Path]) -> Recipe:
    """The recipe at path; reads gets every recipe file opened, even when it fails."""
    if path.suffix == ".def":
        reads.append(path)
        return load_def(path)
    data, origin = _load_chain(path, allow_plaintext_password, (path.resolve(),), reads)
    if data.get("builder") in DEF_BUILDERS:
        return _definition(data, path, reads)
    # paths are already absolute: resolving them again against any root is a no-op
    return parse_recipe(
        data,
        source=str(path),
        root=path.resolve().parent,
        allow_plaintext_password=allow_plaintext_password,
        origin=origin,
    )


def _unique(paths: list[Path]) -> tuple[Path, ...]:
    """Absolute, lexically normalised (no IO: the watcher compares names), in first-read order."""
    return tuple(dict.fromkeys(Path(os.path.normpath(Path.cwd() / p)) for p in paths))


def load_with_inputs(
    path: Path, *, allow_plaintext_password: bool = False
) -> tuple[Recipe, tuple[Path, ...]]:
    """The recipe and every file its build reads: the recipe files (path, what it
    extends, a .def) and its sources (import source, `files`, `%files`, what
    `%setup` names). A source not created yet is listed too."""
    reads: list[Path] = []
    recipe = _load(path, allow_plaintext_password, reads)
    return recipe, _unique([*reads, *source_files(recipe)])


def recipe_inputs(path: Path) -> tuple[Path, ...]:
    """The files the recipe at path reads (load_with_inputs), without raising: a
    recipe that does not load reads what the loader opened before the error (an
    edit of any of them may fix it)."""
    reads: list[Path] = []
    try:
        recipe = _load(path, True, reads)  # a refused password hides no file
    except (NetrootError, ValueError, OSError):  # no recipe edit may stop the watcher
        return _unique(reads)
    try:
        sources = source_files(recipe)
    except OSError:
        sources = []  # %setup's directory unreadable: the build says so
    return _unique([*reads, *sources])


def load_recipe(path: Path, *, allow_plaintext_password: bool = False) -> Recipe:
    """Load a recipe file: TOML (following `extends`) or a legacy `.def`.

    allow_plaintext_password admits `root_password` (for `--insecure-test-password`).
    """
    return _load(path, allow_plaintext_password, [])
