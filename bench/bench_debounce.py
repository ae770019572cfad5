"""Debounce: 1,000 writes within one second to a recipe, through the real watcher.

watchdog (inotify) -> the loop bridge -> the Debouncer -> affected_labels,
exactly as `netroot serve` wires them; the sink records when a build would
start. Prints, per run, the builds triggered and the delay from the last
write to the build start, against the configured quiet period.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from common import workspace

from controller.config.models import Config
from controller.daemon.debounce import Batch, affected_labels
from controller.daemon.watch import Watcher, recipe_dependencies, watch_specs


async def one_run(config: Config, recipe: Path, writes: int, span: float) -> tuple[int, float, int]:
    """(builds triggered, seconds from the last write to the first build start, notifications)."""
    starts: list[tuple[float, Mapping[str, str]]] = []

    async def sink(batch: Batch) -> None:
        deps = recipe_dependencies(config)
        labels = affected_labels(batch, config, config_file=None, recipe_deps=deps)
        if labels:
            starts.append((time.monotonic(), labels))

    def write_all() -> float:
        interval = span / writes
        t0 = time.monotonic()
        for i in range(writes):
            recipe.write_text(f'builder = "import"\nsource = "../source-tree"\n# edit {i}\n')
            # Spread the writes over the span, as an editor or a script would.
            delay = t0 + (i + 1) * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        return time.monotonic()

    watcher = Watcher(
        watch_specs(config, None),
        sink,
        quiet=config.debounce_quiet,
        max_latency=config.debounce_max_latency,
    )
    async with watcher:
        runner = asyncio.create_task(watcher.run())
        await asyncio.sleep(0.2)  # the observer is watching
        last_write = await asyncio.to_thread(write_all)
        await asyncio.sleep(config.debounce_quiet * 3 + 1)  # any late batch would show up
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    builds = sum(len(labels) for _, labels in starts)
    delay = starts[0][0] - last_write if starts else float("nan")
    return builds, delay, watcher.notifications


def main() -> None:
    """Print builds and delay per run, then medians."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--span", type=float, default=1.0, help="seconds the writes take")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="netroot-bench-") as tmp:
        _, config = workspace(Path(tmp), "demo", 10)
        config.overlays_dir.mkdir(parents=True, exist_ok=True)
        config.base_dir.mkdir(parents=True, exist_ok=True)
        recipe = config.recipe_path("demo")
        results = []
        for run in range(args.runs):
            builds, delay, seen = asyncio.run(one_run(config, recipe, args.writes, args.span))
            results.append((builds, delay))
            print(
                f"run {run + 1}: {args.writes} writes in {args.span:.1f} s "
                f"({seen} inotify notifications) -> {builds} build(s); "
                f"last write to build start {delay:.3f} s"
            )
        delays = [d for _, d in results]
        median = statistics.median(delays)
        print(
            f"builds per run: {sorted({b for b, _ in results})}; "
            f"median delay {median:.3f} s = "
            f"{median / config.debounce_quiet:.2f} x the quiet period "
            f"({config.debounce_quiet:.1f} s; maximum latency {config.debounce_max_latency:.0f} s)"
        )


if __name__ == "__main__":
    main()
