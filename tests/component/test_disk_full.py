"""A full disk never wedges the store: on a real 64 MiB ext4 filesystem, loop-mounted.

Build, activate, rollback and gc run with the filesystem full to the last
block: each either works or fails with one line naming the file, history and
links always agree, the served version verifies deeply, and gc frees space
while the disk is still full.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Workspace, make_root_tree

from controller.config.load import load_config
from controller.store import versions as store
from controller.store.layout import label_paths


def _sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB ext4 image (no reserved blocks) mounted with -o loop under tmp_path."""
    if os.geteuid() != 0:
        pytest.skip("loop mounts need root")
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 (e2fsprogs) is not installed")
    image, mnt = tmp_path / "disk.img", tmp_path / "mnt"
    with image.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    made = _sh("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
    assert made.returncode == 0, made.stderr
    mnt.mkdir()
    mounted = _sh("mount", "-o", "loop", str(image), str(mnt))
    if mounted.returncode != 0:
        pytest.skip(f"loop mounts are not allowed here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        _sh("umount", str(mnt))


def _fill(directory: Path) -> Path:
    """Take every free block of the filesystem holding directory."""
    filler = directory / "filler"
    chunk = b"\0" * (1 << 20)
    with filler.open("wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(chunk[:size])
                    os.fsync(f.fileno())
    # Nothing left: even one more byte fails.
    with pytest.raises(OSError) as exc, (directory / "probe").open("wb") as probe:
        probe.write(b"x" * 4096)
        probe.flush()
        os.fsync(probe.fileno())
    assert exc.value.errno == errno.ENOSPC
    (directory / "probe").unlink(missing_ok=True)
    return filler


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _one_line_or_ok(result: subprocess.CompletedProcess[str], small_root: Path) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.startswith("netroot: error")]
        assert len(errors) == 1, result.stderr
        # The file it could not write (SQLite says "disk I/O error" for a full disk).
        assert str(small_root) in errors[0], result.stderr


def _assert_served(ws: Workspace) -> str:
    """History and links agree and the served version verifies deeply."""
    paths = label_paths(load_config(ws.config), ws.label)
    active = store.active_version(paths)
    assert active is not None
    assert os.readlink(paths.export_link) == str(paths.rootfs(active))
    assert os.readlink(paths.tftp_link) == f"_versions/{ws.label}/{active}"
    assert (paths.tftp_link / "vmlinuz").samefile(paths.boot(active) / "vmlinuz")
    store.verify_version(paths, active, depth="deep")
    assert f"# netroot: {ws.label} {active}" in paths.menu.read_text()
    return active


def test_full_disk_build_activate_rollback_gc(small_fs: Path, tmp_path: Path) -> None:
    ws = Workspace(small_fs / "ws", keep_versions=1)
    source = tmp_path / "source"  # outside the small filesystem
    make_root_tree(source)
    ws.write()
    (ws.root / "recipes" / "demo.toml").write_text(f'builder = "import"\nsource = "{source}"\n')
    overlay = ws.overlays / "demo"
    overlay.mkdir(parents=True)
    (overlay / "big.bin").write_bytes(os.urandom(6 << 20))  # only in the first version
    v1 = ws.json("build", "demo", "--activate")["version"]["version"]
    (overlay / "big.bin").unlink()
    (overlay / "tag").write_text("2")
    v2 = ws.json("build", "demo", "--activate")["version"]["version"]
    (overlay / "tag").write_text("3")
    v3 = ws.json("build", "demo", "--activate")["version"]["version"]
    assert _assert_served(ws) == v3

    # A build that fills the disk: one line, the active version still served.
    (source / "huge.bin").write_bytes(b"\1" * (80 << 20))
    built = ws.run("build", "demo", "--activate", check=False)
    assert built.returncode == 1
    _one_line_or_ok(built, small_fs)
    assert _assert_served(ws) == v3
    (source / "huge.bin").unlink()

    filler = _fill(small_fs)
    for command in (("activate", "demo", v2), ("rollback", "demo"), ("recover",)):
        result = ws.run(*command, check=False)
        _one_line_or_ok(result, small_fs)
        _assert_served(ws)

    before = _free(small_fs)
    pruned = ws.run("--json", "gc", "demo", check=False)
    assert pruned.returncode == 0, pruned.stderr
    assert "Traceback" not in pruned.stderr
    assert v1 in pruned.stdout
    assert _free(small_fs) > before + (4 << 20)  # the first version's big file is gone
    active = _assert_served(ws)

    # With space again, everything works and agrees.
    filler.unlink()
    ws.run("recover")
    assert _assert_served(ws) == active
    ws.run("activate", "demo", v3)
    assert _assert_served(ws) == v3
    assert ws.run("verify", "demo", "--deep").returncode == 0
