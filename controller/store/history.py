"""The activation history of a label, replayed into the current and previous versions.

The history file is an append-only log written *before* links are swapped:
it is the single source of truth for which version is active, and start-up
recovery makes the links agree with it. Replay is pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Action = Literal["activate", "rollback"]


@dataclass(frozen=True)
class Entry:
    """One line of the history: when, what, which version."""

    time: str
    action: Action
    version: str

    def line(self) -> str:
        """The entry as written to the file, newline included."""
        return f"{self.time} {self.action} {self.version}\n"


def parse(text: str) -> list[Entry]:
    """Entries of a history file; a torn last line (no newline) is ignored."""
    entries = []
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
    for raw in complete.splitlines():
        parts = raw.split()
        if len(parts) == 3 and parts[1] in ("activate", "rollback"):
            entries.append(Entry(parts[0], parts[1], parts[2]))  # type: ignore[arg-type]
    return entries


def replay(entries: Iterable[Entry], exists: set[str] | None = None) -> list[str]:
    """The rollback stack: activations push, rollbacks pop; top is the active version.

    Versions that no longer exist (when `exists` is given) are dropped, so a
    rollback never targets a pruned version.
    """
    stack: list[str] = []
    for entry in entries:
        if entry.action == "activate":
            if not stack or stack[-1] != entry.version:
                stack.append(entry.version)
        elif stack and stack[-1] != entry.version:
            stack.pop()
            # A rollback names its target; it is the new top.
            if not stack or stack[-1] != entry.version:
                stack.append(entry.version)
    if exists is not None:
        stack = [v for v in stack if v in exists]
        stack = [v for i, v in enumerate(stack) if i == 0 or stack[i - 1] != v]
    return stack
