"""The base of every netroot model, the one reading of pydantic's first error, and TOML reading."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from controller.core.errors import ConfigError


class Model(BaseModel):
    """Base of every model: immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class FirstError:
    """The first thing pydantic found wrong, in the words netroot reports it.

    Only the first: a user fixes one field at a time, and one line names it.
    """

    loc: tuple[str, ...]
    kind: str  # pydantic's error type, such as "missing" or "extra_forbidden"
    problem: str  # pydantic's message without its "Value error, " prefix
    input: Any
    context: dict[str, Any]  # pydantic's ctx: for a literal_error, the values expected

    @property
    def expected(self) -> str:
        """For a literal_error: the values allowed."""
        return str(self.context.get("expected", ""))

    @property
    def field(self) -> str:
        """The dotted path of the field, such as labels.demo.recipe ("" for the whole input)."""
        return ".".join(self.loc)

    @property
    def in_file(self) -> str:
        """The problem as told to someone editing a file."""
        if self.kind == "extra_forbidden":
            return "unknown field"
        if self.kind == "missing":
            return "required field is missing"
        return self.problem


def first_error(exc: ValidationError) -> FirstError:
    """The first error of a ValidationError."""
    err = exc.errors(include_url=False)[0]
    return FirstError(
        loc=tuple(str(part) for part in err["loc"]),
        kind=err["type"],
        problem=str(err["msg"]).removeprefix("Value error, "),
        input=err.get("input"),
        context=dict(err.get("ctx", {})),
    )


def read_toml(
    path: Path, what: str = "file", error: type[ConfigError] = ConfigError
) -> dict[str, Any]:
    """The TOML table of a file; one-line error naming the file if it is missing or invalid."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise error(str(path), "", f"{what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(str(path), "", f"cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(str(path), "", f"invalid TOML: {exc}") from None
    except RecursionError:
        raise error(str(path), "", "invalid TOML: nested too deeply") from None
