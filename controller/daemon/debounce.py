"""Turn a stream of file-change notifications into rebuild decisions (pure).

The watcher shell feeds paths into a Debouncer with the loop's clock value,
sleeps until `deadline()`, then takes one de-duplicated batch, which
`affected_labels` maps to the labels to rebuild. Nothing here reads a clock
or the filesystem, so every timing rule is tested with plain numbers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Literal, TypeAlias

from controller.config.models import Config

Rebuild: TypeAlias = Literal["full", "overlay"]
QUIET_S = 1.0
MAX_LATENCY_S = 10.0

# Directories no recipe or overlay change lives in.
_NOISE_DIRS = frozenset({".git", ".hg", ".svn", ".bzr", "_darcs", "CVS"})
_NOISE_NAME = re.compile(
    r"""
      .*~                 # emacs, vim and nano backups
    | \.\#.*              # emacs lock links
    | \#.*\#              # emacs auto-save
    | 4913                # vim probing whether it may write the directory
    | .*\.sw[a-px]        # vim swap files (.swp, .swo ... and the .swx probe)
    | .*\.tmp             # temporary files, ours included
    | \.goutputstream-.*  # gedit and other GIO writers
    | .*\.kate-swp        # kate swap
    | \.~lock\..*\#       # LibreOffice locks
    """,
    re.VERBOSE,
)


def is_noise(path: str | PurePath) -> bool:
    """True for editor swap/backup/lock files and anything inside a VCS directory."""
    parts = PurePath(path).parts
    if not parts:
        return True
    return bool(_NOISE_DIRS.intersection(parts)) or bool(_NOISE_NAME.fullmatch(parts[-1]))


@dataclass(frozen=True, slots=True)
class Batch:
    """One de-duplicated set of changed paths, with when its first and last change came."""

    paths: frozenset[Path]
    first: float
    last: float
    events: int  # raw notifications folded into this batch

    def __iter__(self) -> Iterator[Path]:
        return iter(sorted(self.paths))


class Debouncer:
    """Collect changes until a quiet period passes, or the maximum latency since the first one.

    The quiet period lets a burst of writes (an editor save, `git checkout`)
    finish before anything is built; the maximum latency keeps a process that
    never stops writing from postponing the build forever.
    """

    def __init__(
        self,
        quiet: float = QUIET_S,
        max_latency: float = MAX_LATENCY_S,
        ignore: Callable[[str | PurePath], bool] = is_noise,
    ) -> None:
        if quiet <= 0:
            raise ValueError(f"quiet period must be positive, got {quiet}")
        if max_latency < quiet:
            raise ValueError(f"maximum latency {max_latency} is shorter than quiet period {quiet}")
        self.quiet = quiet
        self.max_latency = max_latency
        self._ignore = ignore
        self._paths: set[Path] = set()
        self._first = 0.0
        self._last = 0.0
        self._events = 0

    def add(self, path: str | PurePath, now: float) -> bool:
        """Record a change at clock value now; False if the path is noise and was dropped."""
        if self._ignore(path):
            return False
        if not self._paths:
            self._first = now
        self._last = max(self._last, now) if self._paths else now
        self._paths.add(Path(path))
        self._events += 1
        return True

    def __len__(self) -> int:
        return len(self._paths)

    def deadline(self) -> float | None:
        """Clock value at which the pending batch is due; None when nothing is pending."""
        if not self._paths:
            return None
        return min(self._last + self.quiet, self._first + self.max_latency)

    def take(self, now: float) -> Batch | None:
        """The pending batch if it is due at clock value now (and start a new one), else None."""
        due = self.deadline()
        if due is None or now < due:
            return None
        batch = Batch(frozenset(self._paths), self._first, self._last, self._events)
        self._paths = set()
        self._events = 0
        return batch


def _norm(path: str | PurePath) -> str:
    # Lexical only (no resolve(): that is IO); the watcher passes resolved paths.
    return os.path.normpath(os.fspath(path))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def affected_labels(
    paths: Iterable[str | PurePath],
    config: Config,
    *,
    config_file: str | PurePath | None,
    recipe_deps: Mapping[str, Collection[str | PurePath]],
) -> dict[str, Rebuild]:
    """Labels to rebuild for a batch of changed paths, each `full` or `overlay`.

    recipe_deps maps a label to the recipe files (or directories) it depends on
    through `extends` and included files; the label's own recipe always counts.
    A base/ or config change rebuilds every label; a recipe change the labels
    depending on it; an overlay change makes an overlay-only version of the
    labels using that overlay. `full` wins when both apply.
    """
    changed = {_norm(p) for p in paths}
    result: dict[str, Rebuild] = {}
    everything = {_norm(config.base_dir)}
    if config_file is not None:
        everything.add(_norm(config_file))
    if any(_under(p, root) for p in changed for root in everything):
        return dict.fromkeys(sorted(config.labels), "full")
    for label in sorted(config.labels):
        deps = {_norm(config.recipe_path(label)), *(_norm(d) for d in recipe_deps.get(label, ()))}
        if any(_under(p, dep) for p in changed for dep in deps):
            result[label] = "full"
            continue
        dirs = [_norm(config.overlays_dir / name) for name in config.overlay_names(label)]
        if any(_under(p, d) for p in changed for d in dirs):
            result[label] = "overlay"
    return result
