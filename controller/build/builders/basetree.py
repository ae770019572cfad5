"""The base/ tree as the package tools get it: a normalised tar and its digest.

Every entry is owned by root, directories and executables are 0755 and other
files 0644, whatever the checkout's umask or owner: an image never gets a
group-writable /etc because of how someone cloned the repository. The digest
covers exactly what goes into the image, so it keys the caches.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

from controller.core.errors import NetrootError
from controller.store import fsops


@dataclass(frozen=True)
class BaseEntry:
    """One normalised entry of base/."""

    rel: str
    kind: str  # "d", "f" or "l"
    mode: int
    content: bytes  # file content or symlink target


def scan(base_dir: Path) -> list[BaseEntry]:
    """The entries of base_dir, sorted."""
    if not base_dir.is_dir():
        raise NetrootError(
            f"base tree {base_dir} not found (config: base_dir); it holds the "
            "dracut configuration and overlay-root module every image needs"
        )
    entries: list[BaseEntry] = []
    for dirpath, dirnames, filenames in os.walk(base_dir):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(base_dir).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                entries.append(BaseEntry(rel, "l", 0o777, os.readlink(path).encode()))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(BaseEntry(rel, "d", 0o755, b""))
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                entries.append(BaseEntry(rel, "f", mode, path.read_bytes()))
            else:
                raise NetrootError(f"{path}: base/ may hold files, directories and symlinks only")
    return sorted(entries, key=lambda e: e.rel)


def digest(entries: list[BaseEntry]) -> str:
    """sha256 over every entry's path, kind, mode and content."""
    h = hashlib.sha256()
    for e in entries:
        h.update(f"{e.rel}\0{e.kind}\0{e.mode:o}\0{len(e.content)}\0".encode())
        h.update(e.content)
    return h.hexdigest()


def archive(entries: list[BaseEntry]) -> bytes:
    """An uncompressed tar of the entries, root-owned, with fixed timestamps."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.rel)
            info.mode, info.uid, info.gid, info.uname, info.gname = e.mode, 0, 0, "root", "root"
            info.mtime = 0
            if e.kind == "d":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif e.kind == "l":
                info.type, info.linkname = tarfile.SYMTYPE, e.content.decode()
                tar.addfile(info)
            else:
                info.size = len(e.content)
                tar.addfile(info, io.BytesIO(e.content))
    return buf.getvalue()


def materialise(base_dir: Path, cache_dir: Path) -> tuple[str, Path]:
    """(digest, path of the tar) for base_dir, written once per digest under cache_dir."""
    entries = scan(base_dir)
    key = digest(entries)
    path = cache_dir / "base" / f"base-{key[:32]}.tar"
    if not path.is_file():
        fsops.write_atomic(path, archive(entries))
    return key, path


def tar_extract_argv(archive: Path, dest: Path, *options: str) -> list[str]:
    """GNU tar extracting as root would: owners by number, modes kept; then options."""
    files = ("--file", os.fspath(archive), "--directory", os.fspath(dest))
    as_root = ("--numeric-owner", "--same-owner", "--preserve-permissions")
    return ["tar", "--extract", *files, *as_root, *options]


def extract_argv(tar: Path, root: Path) -> list[str]:
    """GNU tar putting the base tree into an image as root would (its directories' modes
    and owners left as the packages made them)."""
    return tar_extract_argv(tar, root, "--no-overwrite-dir")
