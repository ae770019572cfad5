"""Overlay trees copied over the built root: `common/` then `<label>/`.

Regular files, directories and symlinks are applied; a file named `.wh.NAME`
is a whiteout that deletes NAME from the layers below (the OCI image
convention). Device files, sockets and fifos are refused: an overlay is
configuration, not a device tree. Files are always replaced (new inode, then
rename), so a version cloned by hard links never changes an older one.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from controller.core.errors import UnsafePathError
from controller.store import treeindex
from controller.store.safepath import ImageRoot

WHITEOUT = ".wh."
Kind = Literal["dir", "file", "symlink", "whiteout"]


@dataclass(frozen=True)
class OverlayItem:
    """One thing an overlay does to the image, in application order."""

    rel: str
    kind: Kind
    source: Path
    mode: int = 0
    uid: int = 0
    gid: int = 0
    target: str = ""


def _classify(path: Path, st: os.stat_result) -> Kind:
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    if stat.S_ISREG(st.st_mode):
        return "whiteout" if path.name.startswith(WHITEOUT) else "file"
    kind = {
        stat.S_IFCHR: "character device",
        stat.S_IFBLK: "block device",
        stat.S_IFIFO: "fifo",
        stat.S_IFSOCK: "socket",
    }.get(stat.S_IFMT(st.st_mode), "special file")
    raise UnsafePathError(
        f"{path}: overlay holds a {kind}; allowed: regular files, directories, symlinks, "
        f"and {WHITEOUT}NAME whiteouts"
    )


def _check_name(path: Path) -> None:
    try:
        path.name.encode()
    except UnicodeEncodeError:
        # Image paths are UTF-8 (the index, the manifest, JSON events); show the raw bytes.
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise UnsafePathError(f"{shown}: overlay file name is not UTF-8; rename it") from None


def _scan_one(top: Path) -> list[OverlayItem]:
    items: list[OverlayItem] = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        rel_dir = base.relative_to(top).as_posix()
        for name in dirnames + filenames:
            _check_name(base / name)
        for name in sorted(filenames + [d for d in dirnames if (base / d).is_symlink()]):
            path = base / name
            st = path.lstat()
            kind = _classify(path, st)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if kind == "whiteout":
                rel = rel[: len(rel) - len(name)] + name[len(WHITEOUT) :]
                if rel.rsplit("/", 1)[-1] in ("", ".", ".."):
                    # `.wh..` or `.wh...` would delete the directory holding it, or its parent.
                    raise UnsafePathError(
                        f"{path}: whiteout names no file; write {WHITEOUT}NAME for a NAME"
                        " other than . and .."
                    )
            items.append(
                OverlayItem(
                    rel,
                    kind,
                    path,
                    st.st_mode,
                    st.st_uid,
                    st.st_gid,
                    os.readlink(path) if kind == "symlink" else "",
                )
            )
        for name in dirnames:
            path = base / name
            if path.is_symlink():
                continue
            st = path.lstat()
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            items.append(OverlayItem(rel, "dir", path, st.st_mode, st.st_uid, st.st_gid))
        # Directories must come before their contents: os.walk visits them next.
        dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]
    return _parents_first(items)


def _parents_first(items: list[OverlayItem]) -> list[OverlayItem]:
    return sorted(items, key=lambda i: (i.rel.count("/"), i.kind != "dir", i.rel))


def scan_overlays(dirs: Sequence[Path]) -> list[OverlayItem]:
    """Items of every existing overlay directory, in application order."""
    items: list[OverlayItem] = []
    for top in dirs:
        if top.is_dir():
            items.extend(_scan_one(top))
    return items


def overlay_digest(items: Sequence[OverlayItem]) -> str:
    """Digest of what the overlays would do; equal digests mean equal results."""
    h = hashlib.sha256()
    for item in items:
        content = treeindex.file_sha256(item.source) if item.kind == "file" else item.target
        h.update(json.dumps([item.rel, item.kind, item.mode, item.uid, item.gid, content]).encode())
    return h.hexdigest()


def apply_overlays(
    root: Path, items: Sequence[OverlayItem], index: treeindex.Index, name: str | None = None
) -> int:
    """Apply items to the tree at root, keeping its index in step; returns changes made."""
    with ImageRoot(root, name) as image:
        for item in items:
            _apply(image, item, index)
    return len(items)


def _apply(image: ImageRoot, item: OverlayItem, index: treeindex.Index) -> None:
    if item.kind == "whiteout":
        removed = image.remove(item.rel)
        if removed is not None:
            treeindex.drop_subtree(index, removed)
        return
    if item.kind == "dir":
        path, created = image.ensure_dir(item.rel, mode=item.mode, uid=item.uid, gid=item.gid)
        if created:
            index[path] = treeindex.entry(image.lstat(path), "-")
        return
    if item.kind == "symlink":
        path = image.replace_symlink(item.rel, item.target, uid=item.uid, gid=item.gid)
        content = json.dumps(item.target)
    else:
        path, content = image.replace_file(
            item.rel, item.source, mode=item.mode, uid=item.uid, gid=item.gid
        )
    treeindex.drop_subtree(index, path)
    index[path] = treeindex.entry(image.lstat(path), content)
    record_parents(image, path, index)


def record_parents(image: ImageRoot, path: str, index: treeindex.Index) -> None:
    """Directories created on the way to path enter the index too."""
    parts = path.split("/")[:-1]
    for i in range(len(parts), 0, -1):
        parent = "/".join(parts[:i])
        if parent in index:
            break
        index[parent] = treeindex.entry(image.lstat(parent), "-")
