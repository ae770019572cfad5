"""New version after a one-file overlay edit of a 50k-file image, against cp -a and cp -al.

Targets: at most 0.2 x `cp -a` and at most 1.5 x `cp -al` of the same tree,
all measured in this run. The netroot figure is the whole `build` pipeline
(recipe, base reuse, clone, overlay, index, manifest, verify, commit) in its
overlay-only form, which the daemon runs for an overlay edit; a plain
`netroot build`, which also fingerprints the import source, is shown beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from functools import partial
from pathlib import Path

from common import build, run, timed, workspace

from controller.serve import publish
from controller.store.layout import label_paths


def main() -> None:
    """Print medians and the two ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: /var/tmp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir or "/var/tmp", prefix="netroot-bench-") as tmp:
        ws, config = workspace(Path(tmp), "bench", args.files)
        edited = ws.overlays / "bench" / "etc" / "motd"
        edited.parent.mkdir(parents=True)
        edited.write_text("edit 0\n")
        first = build(config, "bench")  # cold: runs the builder, caches the base tree
        paths = label_paths(config, "bench")
        publish.activate(config, paths, first)
        rootfs = paths.rootfs(first)
        os.sync()
        ours, plain, cp_a, cp_al = [], [], [], []
        for i in range(1, args.runs + 1):
            edited.write_text(f"edit {i}\n")
            ours.append(timed(lambda: build(config, "bench", overlays_only=True)))
            os.sync()
            edited.write_text(f"edit {i} again\n")
            plain.append(timed(lambda: build(config, "bench")))
            os.sync()
            cp_a.append(timed(partial(run, ["cp", "-a", str(rootfs), f"{tmp}/cp-a-{i}"])))
            os.sync()
            cp_al.append(timed(partial(run, ["cp", "-al", str(rootfs), f"{tmp}/cp-al-{i}"])))
            os.sync()
        m_ours, m_plain, m_a, m_al = (statistics.median(x) for x in (ours, plain, cp_a, cp_al))
        print(f"{args.files} files, median of {args.runs}:")
        print(f"  netroot overlay-only version: {m_ours * 1e3:8.1f} ms  (daemon, --overlays-only)")
        print(f"  netroot build, inputs checked:{m_plain * 1e3:8.1f} ms  (plain `netroot build`)")
        print(f"  cp -a  of the tree:           {m_a * 1e3:8.1f} ms")
        print(f"  cp -al of the tree:           {m_al * 1e3:8.1f} ms")
        print(f"  ratio to cp -a:  {m_ours / m_a:.2f} (target <= 0.2)")
        print(f"  ratio to cp -al: {m_ours / m_al:.2f} (target <= 1.5)")
        print(f"  plain build ratios: {m_plain / m_a:.2f} x cp -a, {m_plain / m_al:.2f} x cp -al")


if __name__ == "__main__":
    main()
