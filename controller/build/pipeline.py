"""A build: a flat pipeline of named steps over one context, staged then renamed into place."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import structlog

from controller.build.context import BuildContext, Progress, Unchanged
from controller.build.steps import (
    step_base,
    step_boot,
    step_commit,
    step_manifest,
    step_overlays,
    step_resolve,
    step_stage,
    step_verify,
    step_version,
)
from controller.config.models import Config
from controller.core import failpoints
from controller.core.errors import BuildError, NetrootError
from controller.core.proc import file_tail
from controller.store import fsops
from controller.store import versions as store
from controller.store.layout import label_paths
from controller.store.manifest import Manifest

# BuildContext and Progress are part of what a caller of the pipeline works with.
__all__ = [
    "STEPS",
    "BuildContext",
    "Progress",
    "Step",
    "build_log",
    "finish_version",
    "new_build_id",
    "run_build",
]

log = structlog.get_logger(component="build")

Step = Callable[[BuildContext], None]
STEPS: list[tuple[str, Step]] = [
    ("resolve", step_resolve),
    ("stage", step_stage),
    ("base", step_base),
    ("overlays", step_overlays),
    ("boot", step_boot),
    ("version", step_version),
    ("manifest", step_manifest),
    ("verify", step_verify),
    ("commit", step_commit),
]


def finish_version(ctx: BuildContext) -> Manifest:
    """The steps after the tree is complete (boot to commit), for trees made outside
    the pipeline, such as a `netroot shell` session."""
    for name, step in STEPS[STEPS.index(("boot", step_boot)) :]:
        ctx._step = name
        failpoints.hit(f"build:{name}")
        step(ctx)
    return ctx.written_manifest()


def build_log(config: Config, label: str, build_id: str) -> Path:
    """Where a build writes its log: the build id names the file."""
    return config.state_dir / "logs" / label / f"{build_id}.log"


def new_build_id() -> str:
    """A build id: sortable start time plus randomness."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def run_build(
    config: Config,
    label: str,
    *,
    progress: Progress,
    rebuild: bool = False,
    overlays_only: bool = False,
    insecure_test_password: bool = False,
    build_id: str | None = None,
    force: bool = False,
) -> Manifest:
    """Run every step; on failure remove the staging tree and raise BuildError.

    A build identical to the active version (unless force) makes no version: the
    active version's manifest is returned (its id is the active one's).

    The caller holds the label lock. Nothing outside staging changes until the
    final rename, so a failed or killed build leaves the store as it was.
    """
    paths = label_paths(config, label)
    build_id = build_id or new_build_id()
    log_file = build_log(config, label, build_id)
    ctx = BuildContext(
        config=config,
        label=label,
        paths=paths,
        build_id=build_id,
        rebuild=rebuild,
        overlays_only=overlays_only,
        insecure_test_password=insecure_test_password,
        force=force,
        progress=progress,
        log_file=log_file,
    )
    bound = log.bind(label=label, build_id=build_id)
    started = time.monotonic()
    for name, step in STEPS:
        ctx._step = name
        failpoints.hit(f"build:{name}")
        t0 = time.monotonic()
        try:
            step(ctx)
        except Unchanged:
            fsops.remove_tree(ctx.staging)
            bound.info("build unchanged", version=ctx.unchanged)
            progress(name, f"unchanged: identical to the active version {ctx.unchanged}")
            return store.read_manifest(paths, ctx.unchanged)
        except NetrootError as exc:
            _fail(ctx, name, exc)
            if isinstance(exc, BuildError):
                raise
            raise BuildError(name, str(exc), file_tail(log_file)) from exc
        except OSError as exc:
            _fail(ctx, name, exc)
            raise BuildError(name, str(exc), file_tail(log_file)) from exc
        seconds = time.monotonic() - t0
        bound.info("step done", step=name, seconds=round(seconds, 3))
        if seconds >= 1.0:
            progress(name, f"done in {seconds:.1f}s")
    failpoints.hit("build:done")
    bound.info(
        "build done",
        version=ctx.version,
        seconds=round(time.monotonic() - started, 3),
        reused_base=ctx.reused_base,
    )
    return ctx.written_manifest()


def _fail(ctx: BuildContext, step: str, exc: BaseException) -> None:
    log.error("build failed", label=ctx.label, build_id=ctx.build_id, step=step, error=str(exc))
    # A full disk must not hide the step's own error nor keep its staging.
    if ctx.log_file.exists():  # steps before `stage` leave no trace on disk
        with contextlib.suppress(OSError), ctx.log_file.open("a") as f:
            f.write(f"netroot: step {step} failed: {exc}\n")
    fsops.remove_tree(ctx.staging)
    fsops.remove_tree(ctx.paths.staging / f"base-{ctx.build_id}")
