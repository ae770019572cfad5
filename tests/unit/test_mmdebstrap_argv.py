"""The mmdebstrap backend's pure parts: argv, environment, keys, failure explanations."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.build.builders import basetree, builder_for, pkgstage
from controller.build.builders.mmdebstrap import (
    MmdebstrapBuilder,
    explain_failure,
    mmdebstrap_argv,
    mmdebstrap_env,
)
from controller.core.errors import RecipeError
from controller.recipes import MmdebstrapRecipe, distros
from controller.recipes.load import parse_recipe

REPO = Path(__file__).resolve().parents[2]


def recipe(**fields: object) -> MmdebstrapRecipe:
    data = {"distro": "debian", "release": "12", **fields}
    parsed = parse_recipe(data, source="test.toml", root=Path("/recipes"))
    assert isinstance(parsed, MmdebstrapRecipe)
    return parsed


def test_argv_golden_default_mirror() -> None:
    r = recipe(packages=["openssh-server", "mosquitto-clients", "procps"])
    assert mmdebstrap_argv(r, Path("/state/images/x/.staging/b/rootfs")) == [
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        "--verbose",
        "--architectures=amd64",
        "--components=main",
        "--include=dracut,dracut-network,iproute2,linux-image-amd64,mosquitto-clients,"
        "nfs-common,openssh-server,procps,systemd-sysv,zstd",
        "--hook-dir=/usr/share/mmdebstrap/hooks/maybe-merged-usr",
        "--skip=download/empty",
        "--skip=essential/unlink",
        '--setup-hook=mkdir -p "$1/var/cache/apt/archives" && '
        'mount --bind "$NETROOT_DEB_CACHE" "$1/var/cache/apt/archives"',
        '--setup-hook=tar --extract --file "$NETROOT_BASE_TAR" --directory "$1" '
        "--numeric-owner --same-owner --preserve-permissions --no-overwrite-dir",
        '--customize-hook=umount "$1/var/cache/apt/archives"',
        "bookworm",
        "/state/images/x/.staging/b/rootfs",
    ]


def test_argv_golden_mirror_components_arch() -> None:
    r = recipe(
        distro="ubuntu",
        release="24.04",
        arch="arm64",
        mirror="file:///srv/mirror/ubuntu",
        components=["main", "universe", "restricted"],
        packages=["htop"],
    )
    argv = mmdebstrap_argv(r, Path("/t"))
    assert "--architectures=arm64" in argv
    assert "--components=main,universe,restricted" in argv
    assert (
        "--include=dracut,dracut-network,htop,iproute2,linux-image-generic,nfs-common,"
        "procps,systemd-sysv,zstd" in argv
    )
    assert argv[-3:] == ["noble", "/t", "file:///srv/mirror/ubuntu"]


def test_hooks_carry_no_path_and_env_carries_them() -> None:
    argv = mmdebstrap_argv(recipe(), Path("/t"))
    hooks = [a for a in argv if a.startswith("--") and "hook=" in a]
    assert any("$NETROOT_DEB_CACHE" in h for h in hooks)
    assert any("$NETROOT_BASE_TAR" in h for h in hooks)
    assert mmdebstrap_env(Path("/c/debs"), Path("/c/base.tar")) == {
        "NETROOT_DEB_CACHE": "/c/debs",
        "NETROOT_BASE_TAR": "/c/base.tar",
        "INITRD": "No",
    }


def test_dracut_argv_for_the_image_kernel() -> None:
    assert distros.dracut_argv("6.1.0-27-amd64", "/boot/initrd.img-6.1.0-27-amd64") == [
        "dracut",
        "-N",
        "--force",
        "--add",
        "nfs network",
        "--kver",
        "6.1.0-27-amd64",
        "/boot/initrd.img-6.1.0-27-amd64",
    ]


def test_dracut_argv_adds_a_labels_initramfs_modules() -> None:
    argv = distros.dracut_argv("6.1.0-27-amd64", "/x.img", add_drivers=("mlx5_core", "ice"))
    assert argv[5:8] == ["--add-drivers", "mlx5_core ice", "--kver"]


def test_stage_key_ignores_post_files_password_but_not_packages_or_base() -> None:
    def key(r: MmdebstrapRecipe, base: str = "b") -> str:
        return pkgstage.stage_key(r, backend="mmdebstrap", backend_version="1", base_digest=base)

    plain = recipe(packages=["a", "b"])
    assert key(plain) == key(
        recipe(
            packages=["b", "a", "a"], post="echo hi", timezone="UTC", services={"enable": ["ssh"]}
        )
    )
    assert key(plain) != key(recipe(packages=["a", "b", "c"]))
    assert key(plain) != key(plain, base="other")
    assert key(plain) != key(recipe(packages=["a", "b"], mirror="file:///m"))
    assert key(plain) != key(recipe(packages=["a", "b"], release="13"))


def test_input_key_follows_recipe_files_and_base(tmp_path: Path) -> None:
    base = tmp_path / "base"
    (base / "etc").mkdir(parents=True)
    (base / "etc" / "x.conf").write_text("one\n")
    motd = tmp_path / "motd"
    motd.write_text("hello\n")
    r = parse_recipe(
        {"distro": "debian", "release": "12", "files": [{"src": "motd", "dest": "/etc/motd"}]},
        source="t.toml",
        root=tmp_path,
    )
    builder = MmdebstrapBuilder(base)
    first = builder.input_key(r, tmp_path / "t.toml")
    assert builder.input_key(r, tmp_path / "t.toml") == first
    motd.write_text("changed\n")
    second = builder.input_key(r, tmp_path / "t.toml")
    assert second != first
    (base / "etc" / "x.conf").write_text("two\n")
    assert builder.input_key(r, tmp_path / "t.toml") != second


def test_builder_registry() -> None:
    assert builder_for(recipe()).name == "mmdebstrap"


def test_base_archive_is_normalised(tmp_path: Path) -> None:
    base = tmp_path / "base"
    (base / "usr/lib/x").mkdir(parents=True)
    script = base / "usr/lib/x/run"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o775)
    (base / "usr/lib/x/data").write_text("d")
    (base / "usr/lib/x/data").chmod(0o664)
    (base / "link").symlink_to("/usr/lib/x/run")
    entries = basetree.scan(base)
    modes = {e.rel: (e.kind, oct(e.mode)) for e in entries}
    assert modes["usr/lib/x/run"] == ("f", "0o755")
    assert modes["usr/lib/x/data"] == ("f", "0o644")
    assert modes["link"] == ("l", "0o777")
    assert basetree.archive(entries) == basetree.archive(basetree.scan(base))  # deterministic


def test_shipped_base_has_the_overlay_root_module() -> None:
    rels = {e.rel for e in basetree.scan(REPO / "base")}
    assert "usr/lib/dracut/modules.d/90rootovl/module-setup.sh" in rels
    assert "etc/dracut.conf.d/90-netroot.conf" in rels
    # nothing at /lib, /bin or /sbin: those are merged-/usr symlinks in the image
    assert not any(r.split("/")[0] in ("lib", "bin", "sbin", "lib64") for r in rels)


@pytest.mark.parametrize(
    ("line", "field", "words"),
    [
        ("E: Unable to locate package no-such-pkg", "packages", "'no-such-pkg'"),
        ("E: Package 'ghost' has no installation candidate", "packages", "'ghost'"),
        (
            "W: Failed to fetch http://192.0.2.1/debian/dists/bookworm/InRelease"
            "  Could not connect",
            "mirror",
            "cannot fetch",
        ),
        (
            "Err:1 file:/nowhere bookworm Release\n"
            " E: The repository 'x' does not have a Release file.",
            "mirror",
            "Release file",
        ),
    ],
)
def test_failures_name_the_field(line: str, field: str, words: str) -> None:
    err = explain_failure(f"noise\n{line}\nE: mmdebstrap failed\n", recipe(), "debian12.toml")
    assert isinstance(err, RecipeError)
    assert err.field == field
    assert str(err).startswith(f"debian12.toml: {field}: ")
    assert words in str(err)


def test_unexplained_failure_is_left_alone() -> None:
    assert explain_failure("E: something else\n", recipe(), "x.toml") is None


def test_progress_counts_packages_not_index_files() -> None:
    from controller.build.builders.mmdebstrap import _Reporter

    said: list[str] = []
    report = _Reporter(said.append)
    for line in [
        "I: finding correct signed-by value...",
        "Get:1 file:/srv/mirror bookworm InRelease [151 kB]",
        "Get:2 file:/srv/mirror bookworm/main amd64 Packages [8790 kB]",
        "I: downloading packages with apt...",
        "Get:3 file:/srv/mirror bookworm/main amd64 zstd amd64 1.5.4+dfsg2-5 [701 kB]",
        "Unpacking zstd (1.5.4+dfsg2-5) ...",
        "Setting up zstd (1.5.4+dfsg2-5) ...",
        "I: installing remaining packages inside the chroot...",
    ]:
        report(line)
    assert said == [
        "downloading packages with apt (0 downloaded, 0 unpacked, 0 set up)",
        "installing remaining packages inside the chroot (1 downloaded, 1 unpacked, 1 set up)",
    ]
