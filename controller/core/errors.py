"""Typed errors. Library code raises these; only the CLI turns them into exit codes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePath


class NetrootError(Exception):
    """Base of every error netroot reports to a user as one line."""


class ConfigError(NetrootError):
    """A config file, recipe or label name is invalid.

    Carries the file, the dotted field path and what is allowed, so the CLI can
    print one line that tells the user exactly what to fix.
    """

    def __init__(self, source: str, field: str, problem: str, allowed: str = "") -> None:
        self.source = source
        self.field = field
        self.problem = problem
        self.allowed = allowed
        where = f"{source}: {field}" if field else source
        hint = f" (allowed: {allowed})" if allowed else ""
        super().__init__(f"{where}: {problem}{hint}")


class RecipeError(ConfigError):
    """A recipe file is invalid."""


class StoreError(NetrootError):
    """The image store refused an operation (missing version, nothing to roll back...)."""


class VerifyError(StoreError):
    """A version or staged build failed verification."""


class UnsafePathError(NetrootError):
    """A path would escape the image tree, or an overlay holds an unsupported file type."""


class BuildError(NetrootError):
    """A build step failed; carries the step name and the tail of its log."""

    def __init__(self, step: str, message: str, log_tail: str = "") -> None:
        self.step = step
        self.log_tail = log_tail
        super().__init__(f"build step {step!r} failed: {message}")


class ProcessError(NetrootError):
    """A subprocess exited non-zero."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr_tail: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        # The last line that says something: a full disk cuts later messages to "cp: ".
        said = [
            line.strip()
            for line in stderr_tail.splitlines()
            if line.strip().rstrip(":").strip() not in ("", PurePath(str(argv[0])).name)
        ]
        last = said[-1] if said else ""
        super().__init__(f"{argv[0]} exited with status {returncode}: {last}".rstrip(": "))


def describe(exc: BaseException) -> str:
    """One line for an error: an OSError names its file, as `path: reason`."""
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        return f"{where}: {exc.strerror}" if where else exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
