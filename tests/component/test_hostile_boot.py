"""Kernel and initramfs lookup never leaves the image (issue 9, item 4): a hostile
recipe path or an image whose /boot links to the host gives one error line or
resolves inside the image, and never pulls a host file into a version's boot/."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
from support import KVER, Workspace, make_root_tree, snapshot

HOST_KVER = "6.6.6-host"


@pytest.fixture
def host_boot(tmp_path: Path) -> Path:
    """A directory standing for the host's /boot: a kernel and an initramfs (mode 0644,
    so the old code hard-linked them rather than copying)."""
    host = tmp_path / "host-boot"
    host.mkdir()
    for name in (f"vmlinuz-{HOST_KVER}", f"initrd.img-{HOST_KVER}"):
        (host / name).write_bytes(b"host secret " + name.encode())
        (host / name).chmod(0o644)
    return host


def _links(host: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_nlink) for p in host.iterdir()}


def _one_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("netroot: error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


def _no_host_file_in_store(ws: Workspace, host: Path) -> None:
    host_inodes = {p.stat().st_ino for p in host.iterdir()}
    host_bytes = {p.read_bytes() for p in host.iterdir()}
    for dirpath, _dirs, files in os.walk(ws.state):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink():
                continue
            assert path.stat().st_ino not in host_inodes, path
            if "boot" in path.parts:
                assert path.read_bytes() not in host_bytes, path


def _build(ws: Workspace, host: Path) -> str:
    before, links = snapshot(host), _links(host)
    result = ws.run("build", "demo", "--activate", check=False)
    assert snapshot(host) == before
    assert _links(host) == links  # no new hard link to a host inode
    assert all(nlink == 1 for _ino, nlink in _links(host).values())
    _no_host_file_in_store(ws, host)
    assert result.returncode != 0, result.stderr
    return _one_error(result.stderr)


@pytest.mark.parametrize("style", ["dotdot", "absolute"])
def test_recipe_kernel_path_cannot_leave_the_image(
    tmp_path: Path, host_boot: Path, style: str
) -> None:
    ws = Workspace(tmp_path)
    make_root_tree(ws.tree)
    ws.write()
    kernel = host_boot / f"vmlinuz-{HOST_KVER}"
    initrd = host_boot / f"initrd.img-{HOST_KVER}"
    if style == "dotdot":
        up = "../" * 40
        paths = (up + str(kernel).lstrip("/"), up + str(initrd).lstrip("/"))
    else:
        paths = (str(kernel), str(initrd))
    recipe = ws.root / "recipes" / "demo.toml"
    recipe.write_text(recipe.read_text() + f'kernel = "{paths[0]}"\ninitrd = "{paths[1]}"\n')
    line = _build(ws, host_boot)
    assert "kernel" in line and "no such file in the image" in line


@pytest.mark.parametrize("style", ["absolute", "relative"])
def test_boot_linked_to_a_host_directory(tmp_path: Path, host_boot: Path, style: str) -> None:
    ws = Workspace(tmp_path)
    make_root_tree(ws.tree)
    for p in (ws.tree / "boot").iterdir():
        p.unlink()
    (ws.tree / "boot").rmdir()
    target = str(host_boot) if style == "absolute" else "../" * 40 + str(host_boot).lstrip("/")
    (ws.tree / "boot").symlink_to(target)
    ws.write()
    line = _build(ws, host_boot)
    assert "no kernel in /boot of the image" in line


def test_boot_files_linked_to_host_files(tmp_path: Path, host_boot: Path) -> None:
    """The kernel's name is in the image's /boot, its initramfs links to the host."""
    ws = Workspace(tmp_path)
    make_root_tree(ws.tree, kver=HOST_KVER)
    (ws.tree / "boot" / f"initrd.img-{HOST_KVER}").unlink()
    (ws.tree / "boot" / f"initrd.img-{HOST_KVER}").symlink_to(host_boot / f"initrd.img-{HOST_KVER}")
    ws.write()
    line = _build(ws, host_boot)
    assert f"no initramfs for kernel {HOST_KVER}" in line


def test_boot_link_inside_the_image_resolves_there(tmp_path: Path) -> None:
    """An absolute /boot link is the image's own on the node: it works, as a copy."""
    ws = Workspace(tmp_path)
    make_root_tree(ws.tree)
    os.rename(ws.tree / "boot", ws.tree / "real-boot")
    (ws.tree / "boot").symlink_to("/real-boot")
    (ws.tree / "vmlinuz").symlink_to(f"/boot/vmlinuz-{KVER}")
    ws.write()
    recipe = ws.root / "recipes" / "demo.toml"
    recipe.write_text(recipe.read_text() + 'kernel = "/vmlinuz"\n')
    ws.run("build", "demo", "--activate")
    active = ws.active()
    assert active is not None
    boot = ws.images() / active / "boot"
    image = ws.images() / active / "rootfs" / "real-boot"
    assert (boot / "vmlinuz").read_bytes() == (image / f"vmlinuz-{KVER}").read_bytes()
    assert (boot / "initrd.img").read_bytes() == (image / f"initrd.img-{KVER}").read_bytes()
    assert (boot / "vmlinuz").stat().st_ino != (image / f"vmlinuz-{KVER}").stat().st_ino
    assert (boot / "vmlinuz").stat().st_mode & 0o7777 == 0o644
    ws.run("verify", "demo", active, "--deep")


def test_import_members_never_link_host_files(tmp_path: Path, host_boot: Path) -> None:
    """Hard-link members naming host files (absolute, `..`, or through a symlink member
    to the host) are extracted inside the image or refused, never linked to the host."""
    ws = Workspace(tmp_path)
    make_root_tree(ws.tree)
    kernel = host_boot / f"vmlinuz-{HOST_KVER}"
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(ws.tree, arcname=".")
        members = [
            ("./boot/hl-abs", tarfile.LNKTYPE, str(kernel)),
            ("./boot/hl-dotdot", tarfile.LNKTYPE, "../" * 40 + str(kernel).lstrip("/")),
            ("./hostboot", tarfile.SYMTYPE, str(host_boot)),
            (f"./boot/vmlinuz-{HOST_KVER}", tarfile.LNKTYPE, f"./hostboot/{kernel.name}"),
        ]
        for name, kind, target in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    ws.write(source="evil.tar")
    before, links = snapshot(host_boot), _links(host_boot)
    result = ws.run("build", "demo", "--activate", check=False)
    assert snapshot(host_boot) == before and _links(host_boot) == links
    _no_host_file_in_store(ws, host_boot)
    if result.returncode != 0:
        _one_error(result.stderr)
