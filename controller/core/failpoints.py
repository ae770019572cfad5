"""Named fault-injection points for the crash-safety tests.

NETROOT_FAILPOINT=NAME[#N] makes the process SIGKILL itself the N-th time
(default first) it passes point NAME. Unset, hit() is one dict lookup.
The tests use it to kill builds and activations at every step boundary.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get("NETROOT_FAILPOINT")
    if not spec:
        return None
    name, _, nth = spec.partition("#")
    return name, int(nth or "1")


_TARGET = _target()


def hit(name: str) -> None:
    """Die here with SIGKILL if this is the configured failpoint."""
    if _TARGET is None or _TARGET[0] != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == _TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)
