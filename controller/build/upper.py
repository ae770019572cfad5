"""What an overlay upper layer holds after a `netroot shell` session, and the index after it.

The session runs copy-on-write (controller.build.builders.chroot); its upper
layer is read here before it is merged: every entry with its kind (a
whiteout, an opaque directory), which of them really changed the tree, and
the tree index brought up to date without hashing the unchanged files again.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from controller.build.builders import cow
from controller.store import treeindex


def _kind(st: os.stat_result, path: Path) -> str:
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return "whiteout"
    if stat.S_ISDIR(st.st_mode):
        return "opaque" if cow.is_opaque(path) else "dir"
    return "file" if stat.S_ISREG(st.st_mode) else "other"


def upper_entries(upper: Path) -> list[tuple[str, str]]:
    """Every entry of an overlay upper layer as (path, kind), parents before children."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(upper):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = base / name
            entries.append((path.relative_to(upper).as_posix(), _kind(path.lstat(), path)))
    return entries


def meaningful_changes(entries: Sequence[tuple[str, str]], upper: Path, lower: Path) -> list[str]:
    """Paths that differ from lower: directories copied up only for a child do not count."""
    changed = []
    for rel, kind in entries:
        if kind == "whiteout":
            changed.append(f"-{rel}")
            continue
        if kind == "dir":
            try:
                before = (lower / rel).lstat()
            except FileNotFoundError:
                changed.append(rel)
                continue
            now = (upper / rel).lstat()
            if stat.S_ISDIR(before.st_mode) and (before.st_mode, before.st_uid, before.st_gid) == (
                now.st_mode,
                now.st_uid,
                now.st_gid,
            ):
                continue
        changed.append(rel)
    return changed


def update_index(index: treeindex.Index, root: Path, entries: Sequence[tuple[str, str]]) -> None:
    """Bring an index up to date with upper-layer entries merged into root (parents first)."""
    for rel, kind in entries:
        if kind != "dir":  # removed, replaced, or an opaque directory: what was below is gone
            treeindex.drop_subtree(index, rel)
        if kind == "whiteout":
            continue
        st = (root / rel).lstat()
        if stat.S_ISREG(st.st_mode):
            content = treeindex.file_sha256(root / rel)
        elif stat.S_ISLNK(st.st_mode):
            content = json.dumps(os.readlink(root / rel))
        else:
            content = "-"
        if kind == "dir" and not index.get(rel, "d").startswith("d"):
            treeindex.drop_subtree(index, rel)  # a directory took a file's place
        index[rel] = treeindex.entry(st, content)
