"""Copy-on-write runs: a command inside an image whose files may be hard links.

A cloned tree shares inodes with the package-stage cache and with older
versions (fsops.clone_tree falls back to hard links). A command run inside it,
a user's post script above all, may write a file in place and would change
every tree sharing that inode. So the command sees an overlay: the tree as the
read-only lower layer, a scratch directory as the upper one. Afterwards the
upper layer is merged into the tree by rename: every changed file arrives as a
new inode, never written through a shared one.

An `rw` label's node writes its served tree in place, where no overlay stands
between it and the inodes; its versions are therefore private copies
(version_tree), never clones sharing inodes with the cache or another version.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path

from controller.core import proc
from controller.core.errors import NetrootError
from controller.store import fsops

OPAQUE_XATTR = "trusted.overlay.opaque"
OVERLAY_XATTR_PREFIX = "trusted.overlay."


def overlay_options(lower: Path, upper: Path, work: Path) -> str:
    """Mount options of the overlay: plain copy-up, no features that leave state around."""
    for path in (lower, upper, work):
        if any(c in os.fspath(path) for c in ",:\\"):
            raise NetrootError(f"{path}: a path with ',', ':' or '\\' cannot be an overlay layer")
    return (
        f"lowerdir={lower},upperdir={upper},workdir={work},"
        "redirect_dir=off,metacopy=off,index=off,xino=off"
    )


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: Path) -> bool:
    """An overlay upper directory marked opaque: it hides the lower one's entries."""
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _clean_xattrs(path: Path) -> None:
    """Overlay bookkeeping must not travel into the image."""
    with contextlib.suppress(OSError):
        for name in os.listxattr(path, follow_symlinks=False):
            if name.startswith(OVERLAY_XATTR_PREFIX):
                os.removexattr(path, name, follow_symlinks=False)


def _remove(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        path.unlink()


def _merge_dir(src: Path, dst: Path, st: os.stat_result) -> None:
    """Make dst a directory with src's metadata (directories are never hard links)."""
    try:
        existing = dst.lstat()
    except FileNotFoundError:
        existing = None
    if existing is not None and (not stat.S_ISDIR(existing.st_mode) or is_opaque(src)):
        _remove(dst)
        existing = None
    if existing is None:
        dst.mkdir()
    os.chown(dst, st.st_uid, st.st_gid)
    dst.chmod(stat.S_IMODE(st.st_mode))


def merge_upper(upper: Path, root: Path) -> int:
    """Apply an overlay upper layer to root by rename; returns the entries applied."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(upper):
        base = Path(dirpath)
        target_dir = root / base.relative_to(upper)
        for name in sorted(dirnames):
            src, dst = base / name, target_dir / name
            _merge_dir(src, dst, src.lstat())
            _clean_xattrs(dst)
            count += 1
        for name in sorted(filenames):
            src, dst = base / name, target_dir / name
            st = src.lstat()
            if _is_whiteout(st):
                _remove(dst)
            else:
                try:
                    os.rename(src, dst)  # a new inode takes the path; shared ones stay intact
                except OSError as exc:
                    if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    _remove(dst)
                    os.rename(src, dst)
                _clean_xattrs(dst)
            count += 1
    return count


def copy_tree_argv(src: Path, dst: Path) -> list[str]:
    """cp making dst a private copy of src: new inodes, blocks shared by reflink where the
    filesystem has them (copy-on-write in the kernel), copied otherwise; hard links
    inside the tree stay links among the copies."""
    return ["cp", "-a", "--reflink=auto", "--no-target-directory", os.fspath(src), os.fspath(dst)]


def version_tree(src: Path, dst: Path, *, rw: bool) -> None:
    """Make dst, a version's tree, from src (a cached base or another version).

    Read-only versions are never written in place, so a clone (reflinks or hard
    links) is safe and free. An rw version is written by its node through the
    export: it gets its own inodes, or the node's writes would land in the cache
    and every version sharing them.
    """
    if not rw:
        fsops.clone_tree(src, dst)
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    proc.run(copy_tree_argv(src, dst))
