"""What a version serves to every host: boot files the servers can read, no secrets.

Real builds of an import recipe through the CLI; the initramfs fixtures are
real newc cpio archives (cpio -H newc), compressed with zstd as dracut does,
behind an uncompressed early archive.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from support import KVER, Workspace

from controller.build import cpio as initramfs
from controller.build import secretscan

HASH = "$6$salt$" + "x" * 86


def make_initramfs(path: Path, files: dict[str, bytes], tmp: Path) -> Path:
    """An early cpio (one microcode-like file) then the main archive, zstd-compressed."""
    if shutil.which("cpio") is None or shutil.which("zstd") is None:
        pytest.fail("cpio and zstd are needed (Debian packages cpio, zstd)")
    archives = []
    for name, members in (("early", {"kernel/x86/microcode/GenuineIntel.bin": b"ucode"}),
                          ("main", files)):  # fmt: skip
        tree = tmp / f"initramfs-{name}"
        for member, content in members.items():
            (tree / member).parent.mkdir(parents=True, exist_ok=True)
            (tree / member).write_bytes(content)
        listing = "\n".join(sorted(members)) + "\n"
        done = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree,
                              input=listing.encode(), capture_output=True, check=True,
                              timeout=60)  # fmt: skip
        archives.append(done.stdout)
    main = subprocess.run(["zstd", "-q", "-c"], input=archives[1], capture_output=True,
                          check=True, timeout=60).stdout  # fmt: skip
    path.write_bytes(archives[0] + main)
    path.chmod(0o600)  # as dracut leaves it
    return path


def test_initramfs_members_are_read_through_early_and_compressed_archives(tmp_path: Path) -> None:
    image = make_initramfs(tmp_path / "initrd.img", {"usr/bin/sh": b"#!", "etc/x": b"y"}, tmp_path)
    listing = initramfs.read(image)
    names = [name for name, _ in listing.members]
    assert names == ["kernel/x86/microcode/GenuineIntel.bin", "etc/x", "usr/bin/sh"]
    assert listing.unreadable == ""
    (tmp_path / "opaque").write_bytes(b"not an archive")
    opaque = initramfs.read(tmp_path / "opaque")
    assert opaque.members == [] and "not a cpio archive" in opaque.unreadable


def test_boot_files_are_world_readable_and_the_image_keeps_its_modes(
    workspace: Workspace, tmp_path: Path
) -> None:
    initrd = workspace.tree / "boot" / f"initrd.img-{KVER}"
    make_initramfs(initrd, {"usr/bin/sh": b"#!/bin/sh\n"}, tmp_path)
    version = workspace.json("build", "demo", "--activate")["version"]["version"]
    boot = workspace.images() / version / "boot"
    for name in ("vmlinuz", "initrd.img"):
        assert stat.S_IMODE((boot / name).stat().st_mode) == 0o644, name
    inside = workspace.images() / version / "rootfs" / "boot" / f"initrd.img-{KVER}"
    assert stat.S_IMODE(inside.stat().st_mode) == 0o600  # the tree is as built
    assert (boot / "initrd.img").read_bytes() == inside.read_bytes()
    workspace.run("verify", "demo", "--deep")


def test_an_initramfs_carrying_a_secret_is_refused(workspace: Workspace, tmp_path: Path) -> None:
    initrd = workspace.tree / "boot" / f"initrd.img-{KVER}"
    key = b"-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"
    make_initramfs(initrd, {"etc/ssh/ssh_host_ed25519_key": key, "etc/hostname": b"n"}, tmp_path)
    done = workspace.run("build", "demo", check=False)
    assert done.returncode == 1
    assert "/etc/ssh/ssh_host_ed25519_key (ssh host private key)" in done.stderr, done.stderr
    assert done.stderr.count("netroot: error:") == 1
    assert not list(workspace.images().glob("2*"))  # no version


def test_host_keys_are_removed_and_verify_lists_secrets(workspace: Workspace) -> None:
    ssh = workspace.tree / "etc" / "ssh"
    ssh.mkdir(parents=True)
    for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "ssh_host_rsa_key"):
        (ssh / name).write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n" if "pub" not in name
                                else "ssh-ed25519 AAAA\n")  # fmt: skip
    (ssh / "sshd_config").write_text("Port 22\n")
    (workspace.tree / "etc" / "shadow").write_text(f"root:{HASH}:1::::::\nbin:*:1::::::\n")
    (workspace.tree / "root" / ".ssh").mkdir(parents=True)
    (workspace.tree / "root" / ".ssh" / "id_ed25519").write_text("key\n")
    (workspace.tree / "etc" / "site.pem").write_text("-----BEGIN RSA PRIVATE KEY-----\n")
    version = workspace.json("build", "demo", "--activate")["version"]["version"]
    rootfs = workspace.images() / version / "rootfs"
    assert sorted(p.name for p in (rootfs / "etc" / "ssh").iterdir()) == ["sshd_config"]
    workspace.run("verify", "demo", "--deep")  # the index agrees with the stripped tree
    found = workspace.json("verify", "demo", "--secrets")["secrets"]
    assert found == [
        {"path": "/etc/shadow", "why": "password hashes (root)"},
        {"path": "/etc/site.pem", "why": "private key"},
        {"path": "/root/.ssh/id_ed25519", "why": "ssh private key"},
    ]
    text = workspace.run("verify", "demo", "--secrets").stdout
    assert "3 secret-looking file(s)" in text and "/etc/shadow: password hashes (root)" in text


def test_a_second_identical_build_makes_no_version(workspace: Workspace) -> None:
    first = workspace.run("build", "demo", "--activate")
    assert "activated demo" in first.stdout
    again = workspace.run("build", "demo", "--activate")
    assert again.stdout.startswith("unchanged: demo "), again.stdout
    assert len(workspace.versions()) == 1
    as_json = workspace.json("build", "demo", "--activate")
    assert as_json["unchanged"] is True and as_json["activated"] is False
    assert as_json["version"]["version"] == workspace.versions()[0]
    history = (workspace.images() / "history").read_text().splitlines()
    assert len(history) == 1  # no second activation line
    forced = workspace.json("build", "demo", "--activate", "--force")
    assert forced["unchanged"] is False and len(workspace.versions()) == 2
    # a real change still makes a version
    (workspace.tree / "etc" / "hostname").write_text("other\n")
    changed = workspace.json("build", "demo", "--activate")
    assert changed["unchanged"] is False and len(workspace.versions()) == 3


def test_validate_warns_about_node_side_packages_and_baked_secrets(tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "bare.toml").write_text(
        'distro = "debian"\nrelease = "12"\npackages = ["openssh-server"]\n'
        'post = "ssh-keygen -t ed25519 -N \\"\\" -f /etc/ssh/ssh_host_ed25519_key"\n'
    )
    shipped = Path(__file__).resolve().parents[2] / "recipes" / "debian12.toml"
    config = tmp_path / "netroot.toml"
    config.write_text(
        f'state_dir = "state"\nrecipes_dir = "recipes"\n[labels.bare]\nrecipe = "bare.toml"\n'
        f'[labels.debian12]\nrecipe = "{shipped}"\n'
    )
    ws = Workspace(tmp_path)
    done = ws.run("validate")
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    bare = [w for w in warnings if w.startswith("netroot: warning: bare:")]
    assert any("no netbase (/etc/protocols" in w for w in bare), warnings
    assert any("no mosquitto-clients" in w for w in bare)
    assert any("runs ssh-keygen at build time" in w for w in bare)
    assert any("ssh host private key" in w for w in bare)
    shipped_warnings = [w for w in warnings if w.startswith("netroot: warning: debian12:")]
    assert not any("packages:" in w for w in shipped_warnings), shipped_warnings
    report = json.loads(ws.run("--json", "validate").stdout)
    assert report["labels"]["bare"]["warnings"] and report["valid"] is True


@pytest.mark.parametrize(
    ("path", "content", "why"),
    [
        ("etc/ssh/ssh_host_rsa_key", b"", "ssh host private key"),
        ("etc/ssh/ssh_host_rsa_key.pub", b"ssh-rsa AAAA", None),
        ("etc/shadow", b"root:*:1::::::\nuser:!:1::::::\n", None),
        ("etc/shadow", b"root:!" + HASH.encode() + b":1::::::\n", "password hashes (root)"),
        ("etc/munge/munge.key", b"k", "munge key"),
        ("etc/ssl/certs/ca.pem", b"-----BEGIN CERTIFICATE-----", None),
    ],
)
def test_secret_rules(path: str, content: bytes, why: str | None) -> None:
    assert secretscan.classify(path, content) == why
