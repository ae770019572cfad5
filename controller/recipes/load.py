"""Read a recipe file into its model, with one-line errors naming file and field."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from controller.errors import RecipeError
from controller.recipes.models import Recipe

_ADAPTER: TypeAdapter[Recipe] = TypeAdapter(Recipe)


def _first_error(exc: ValidationError, source: str) -> RecipeError:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"] if p != "import")
    if err["type"] == "extra_forbidden":
        return RecipeError(source, field, "unknown field")
    if err["type"] == "missing":
        return RecipeError(source, field, "required field is missing")
    if err["type"] == "literal_error" and field == "builder":
        return RecipeError(source, field, "unknown builder", str(err["ctx"]["expected"]))
    return RecipeError(source, field, str(err["msg"]).removeprefix("Value error, "))


def parse_recipe(data: dict[str, Any], *, source: str, root: Path) -> Recipe:
    """Validate recipe data; relative paths are taken relative to root (the recipe's dir)."""
    if "source" in data and isinstance(data["source"], str):
        data = {**data, "source": str(root / data["source"])}
    data = {"builder": data.get("builder", "import"), **data}
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise _first_error(exc, source) from None


def load_recipe(path: Path) -> Recipe:
    """Load a TOML recipe file."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RecipeError(str(path), "", "recipe file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(str(path), "", f"cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(str(path), "", f"invalid TOML: {exc}") from None
    return parse_recipe(data, source=str(path), root=path.resolve().parent)
