"""Activation time against image size: 1k, 10k and 100k files.

Activation must not depend on the size of the image (target: 100k/1k ratio
at most 1.5, well under 10 ms). Each activation is the real one
(controller.serve.publish: links, exports, menus), alternating between two
versions of the same label.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import build, workspace

from controller.serve import publish
from controller.store.layout import label_paths

SIZES = (1_000, 10_000, 100_000)


def main() -> None:
    """Print median activation time per size and the ratio 100k/1k."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: /var/tmp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir or "/var/tmp", prefix="netroot-bench-") as tmp:
        pairs = {}
        for files in SIZES:
            label = f"size{files}"
            ws, config = workspace(Path(tmp), label, files)
            first = build(config, label)
            (ws.overlays / label).mkdir(parents=True)
            (ws.overlays / label / "marker").write_text("second")
            pairs[files] = (config, label_paths(config, label), first, build(config, label))
        os.sync()  # the builds' writeback must not land inside the timed activations
        samples: dict[int, list[float]] = {files: [] for files in SIZES}
        for i in range(args.runs):  # interleaved, so disk noise hits every size alike
            for files, (config, paths, first, second) in pairs.items():
                t0 = time.perf_counter()
                publish.activate(config, paths, first if i % 2 == 0 else second)
                samples[files].append(time.perf_counter() - t0)
        medians = {files: statistics.median(s) for files, s in samples.items()}
        for files, s in samples.items():
            p95 = sorted(s)[int(0.95 * len(s))]
            print(
                f"{files:>7} files: median {medians[files] * 1e3:6.2f} ms, "
                f"p95 {p95 * 1e3:6.2f} ms over {args.runs} activations"
            )
        ratio = medians[SIZES[-1]] / medians[SIZES[0]]
        print(f"ratio 100k/1k: {ratio:.2f} (target <= 1.5, each well under 10 ms)")


if __name__ == "__main__":
    main()
