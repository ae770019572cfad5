"""Why a command failed, for a program: `{"error": {"kind", "step", "message", "log_tail"}}`.

`netroot --json` prints it on stdout when a command fails, and the daemon reads
it from its child builds: both sides use this one model, so the daemon learns
the failed step without reading the text meant for people.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ValidationError

from controller.core.errors import (
    BuildError,
    ConfigError,
    NetrootError,
    ProcessError,
    RecipeError,
    StoreError,
    UnsafePathError,
    VerifyError,
)
from controller.core.model import Model

FailureKind = Literal[
    "build",
    "recipe",
    "config",
    "verify",
    "store",
    "unsafe_path",
    "process",
    "error",
    "database",
    "os",
    "interrupted",
    "usage",
]

# Most specific first: RecipeError is a ConfigError, VerifyError a StoreError.
_KINDS: tuple[tuple[type[NetrootError], FailureKind], ...] = (
    (BuildError, "build"),
    (RecipeError, "recipe"),
    (ConfigError, "config"),
    (VerifyError, "verify"),
    (StoreError, "store"),
    (UnsafePathError, "unsafe_path"),
    (ProcessError, "process"),
)


class Failure(Model):
    """One failed command: what kind of error, the build step (builds only), the one-line
    message a person sees after `netroot: error: `, and the build log's last lines."""

    kind: FailureKind
    step: str | None
    message: str
    log_tail: str


class FailureReport(Model):
    """The one JSON object a failed command prints with --json."""

    error: Failure

    def to_json(self) -> str:
        """One line of JSON."""
        return self.model_dump_json()

    @classmethod
    def parse(cls, text: str) -> FailureReport | None:
        """The report in a child's stdout (its last non-empty line), or None if there is none."""
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            return None
        try:
            return cls.model_validate_json(lines[-1])
        except ValidationError:
            return None


def kind_of(exc: NetrootError) -> FailureKind:
    """The kind of a netroot error, by its class."""
    for cls, kind in _KINDS:
        if isinstance(exc, cls):
            return kind
    return "error"


def report(exc: NetrootError) -> FailureReport:
    """The report of a netroot error (a failed build carries its step and log tail)."""
    build = exc if isinstance(exc, BuildError) else None
    return FailureReport(
        error=Failure(
            kind=kind_of(exc),
            step=build.step if build else None,
            message=str(exc),
            log_tail=build.log_tail if build else "",
        )
    )
