"""The base of every netroot model, the one reading of pydantic's first error, and TOML reading."""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from controller.core.errors import ConfigError

_M = TypeVar("_M", bound=BaseModel)


class Model(BaseModel):
    """Base of every model: immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def trusted(cls, **values: Any) -> Self:
        """An instance of values that are valid already, made without validating them again.

        What `model_construct` does, for the daemon's hottest path (the events of
        each node report in a boot storm), at a fifth of its cost: the defaults
        are looked up once per class. Unlike `model_construct` it refuses a name
        that is not a field, and a required field left out.
        """
        template, required = _template(cls)
        fields = template.copy()
        fields.update(values)  # a known key keeps its place: the dict is in field order
        if len(fields) != len(template) or not required <= values.keys():
            unknown = sorted(values.keys() - template.keys())
            missing = sorted(required - values.keys())
            raise TypeError(f"{cls.__name__}: unknown {unknown}, missing {missing}")
        return _filled(cls, fields, set(values))

    def trusted_update(self, **changes: Any) -> Self:
        """self with changes that are valid already: `model_copy(update=...)` at a third of
        its cost (the state machine makes two a report); an unknown name is refused."""
        cls = type(self)
        template, _ = _template(cls)
        if not changes.keys() <= template.keys():
            raise TypeError(f"{cls.__name__}: unknown {sorted(changes.keys() - template.keys())}")
        fields = self.__dict__.copy()
        fields.update(changes)
        return _filled(cls, fields, self.__pydantic_fields_set__ | changes.keys())


def _filled(cls: type[_M], fields: dict[str, Any], fields_set: set[str]) -> _M:
    made = cls.__new__(cls)
    _set = object.__setattr__  # frozen: the way pydantic itself fills an instance
    _set(made, "__dict__", fields)
    _set(made, "__pydantic_fields_set__", fields_set)
    _set(made, "__pydantic_extra__", None)
    _set(made, "__pydantic_private__", None)
    return made


@functools.cache
def _template(cls: type[BaseModel]) -> tuple[dict[str, Any], frozenset[str]]:
    """Every field of cls in order with its default (None for a required one), and the
    required ones. A model whose defaults need a factory, or that has private
    attributes or a post-init step, has no template."""
    if cls.__pydantic_post_init__ or cls.__private_attributes__:
        raise TypeError(f"{cls.__name__}: made by model_construct, not trusted()")
    template: dict[str, Any] = {}
    required: set[str] = set()
    for name, field in cls.model_fields.items():
        if field.default_factory is not None or isinstance(field.default, list | dict | set):
            # each instance needs its own: a factory's, or a copy of a mutable default
            raise TypeError(f"{cls.__name__}.{name}: a default made per instance")
        if field.is_required():
            required.add(name)
        template[name] = None if field.is_required() else field.default
    return template, frozenset(required)


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
