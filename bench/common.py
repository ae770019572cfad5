"""Shared set-up for the benchmarks: real trees and a real store under a temp dir."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from support import Workspace, make_root_tree  # noqa: E402

from controller.build.pipeline import run_build  # noqa: E402
from controller.core import log  # noqa: E402

log.configure(
    level=int(__import__("os").environ.get("NETROOT_BENCH_LOG", "30"))
)  # warnings only: the figures are the output
from controller.config.load import load_config  # noqa: E402
from controller.config.models import Config  # noqa: E402

# What the benchmarks take from here, support's helpers included.
__all__ = [
    "REPO",
    "Workspace",
    "build",
    "make_root_tree",
    "median_of",
    "quiet",
    "run",
    "timed",
    "workspace",
]


def quiet(step: str, message: str) -> None:
    """Progress sink that prints nothing."""


def workspace(root: Path, label: str, files: int) -> tuple[Workspace, Config]:
    """A label importing a tree of `files` files, config loaded."""
    ws = Workspace(root / label, label=label, keep_versions=100)
    make_root_tree(ws.tree, files=files)
    ws.write()
    return ws, load_config(ws.config)


def build(config: Config, label: str, *, overlays_only: bool = False) -> str:
    """Build a version in-process; returns its id."""
    return run_build(config, label, progress=quiet, overlays_only=overlays_only).version


def timed(fn: Callable[[], object]) -> float:
    """Seconds fn took."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_of(fn: Callable[[], object], runs: int) -> float:
    """Median seconds over runs."""
    return statistics.median(timed(fn) for _ in range(runs))


def run(argv: list[str]) -> None:
    """Run a baseline command."""
    subprocess.run(argv, check=True)
