"""Tables for people, JSON for programs, one-line errors."""

from __future__ import annotations

import json
import re
import sys
import time
import unicodedata
from collections.abc import Sequence
from typing import Any

from controller.core.errors import BuildError, NetrootError
from controller.core.failure import Failure, FailureKind, FailureReport, report


def error(exc: NetrootError, *, as_json: bool = False) -> None:
    """One line on stderr (plus the log tail of a failed build); with --json the
    failure report on stdout instead."""
    if as_json:
        print(report(exc).to_json(), flush=True)
        return
    print(f"netroot: error: {exc}", file=sys.stderr)
    if isinstance(exc, BuildError) and exc.log_tail:
        print("--- last lines of the build log ---", file=sys.stderr)
        print(exc.log_tail, file=sys.stderr)


def failed(kind: FailureKind, message: str, *, as_json: bool = False) -> None:
    """A failure that is not a NetrootError (a database, the file system), reported alike."""
    if as_json:
        failure = Failure(kind=kind, step=None, message=message, log_tail="")
        print(FailureReport(error=failure).to_json(), flush=True)
    else:
        print(f"netroot: error: {message}", file=sys.stderr)


# C0 and C1 controls, DEL, and the Unicode format characters that reorder or hide
# text (bidi overrides, zero-width): from a node or a DHCP client they could move
# the cursor, retitle the terminal or disguise what the operator reads.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]|[^\x00-\x7f]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if ord(char) > 0x9F and unicodedata.category(char) not in ("Cc", "Cf", "Zl", "Zp"):
        return char  # an ordinary letter or symbol of another script
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str, *, newlines: bool = False) -> str:
    """text with control characters escaped (\\x1b), safe to print to a terminal.

    Tabs stay; newlines stay only with newlines=True (a multi-line log tail).
    """
    escaped = _UNSAFE.sub(_escape, text)
    return escaped if newlines else escaped.replace("\n", "\\n")


def emit_json(data: Any) -> None:
    """Pretty JSON on stdout."""
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns on stdout."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    for row in [list(headers), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def human_size(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


class Progress:
    """Step progress on stderr with elapsed seconds; silent with --json."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.started = time.monotonic()

    def __call__(self, step: str, message: str) -> None:
        """Print one progress line."""
        if not self.quiet:
            elapsed = time.monotonic() - self.started
            print(f"[{elapsed:7.1f}s] {step}: {message}", file=sys.stderr, flush=True)
