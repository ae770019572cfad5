"""Typed errors. Library code raises these; only the CLI turns them into exit codes."""

from __future__ import annotations

from collections.abc import Sequence


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


class InUseError(StoreError):
    """A version is still used by a live node or is otherwise protected."""


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
        last = stderr_tail.strip().splitlines()[-1:] or [""]
        super().__init__(f"{argv[0]} exited with status {returncode}: {last[0]}".rstrip(": "))
