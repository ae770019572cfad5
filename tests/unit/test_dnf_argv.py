"""The dnf backend's pure parts: argv, configuration files, repositories, error mapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.build.builders import builder_for, dnf, package_backend
from controller.core.errors import RecipeError
from controller.recipes import DnfRecipe, distros, load_recipe


def recipe(tmp_path: Path, text: str) -> DnfRecipe:
    path = tmp_path / "r.toml"
    path.write_text(text)
    loaded = load_recipe(path)
    assert isinstance(loaded, DnfRecipe)
    return loaded


def test_argv_is_golden(tmp_path: Path) -> None:
    r = recipe(
        tmp_path,
        'distro = "rocky"\nrelease = "9"\nmirror = "file:///m"\n'
        'gpgcheck = false\npackages = ["vim-minimal"]\n',
    )
    argv = dnf.dnf_argv(r, Path("/s/rootfs"), Path("/c"), host_repos=False)
    assert argv == [
        "dnf",
        "--installroot=/s/rootfs",
        "--releasever=9",
        "--forcearch=x86_64",
        "--config=/c/dnf.conf",
        "--setopt=reposdir=/c/repos.d",
        "--noplugins",
        "--assumeyes",
        "install",
        "dracut",
        "dracut-network",
        "iproute",
        "kernel",
        "nfs-utils",
        "procps-ng",
        "systemd",
        "vim-minimal",
        "zstd",
    ]
    host = dnf.dnf_argv(r, Path("/s/rootfs"), Path("/c"), host_repos=True)
    assert "--setopt=reposdir=/etc/yum.repos.d,/etc/distro.repos.d" in host


def test_mirror_layout_and_keys(tmp_path: Path) -> None:
    r = recipe(
        tmp_path, 'distro = "rocky"\nrelease = "9"\nmirror = "http://mirror.example/rocky/"\n'
    )
    repos = dnf.repositories(r, "r.toml")
    assert [(x.name, x.baseurl) for x in repos] == [
        ("BaseOS", "http://mirror.example/rocky/$releasever/BaseOS/$basearch/os/"),
        ("AppStream", "http://mirror.example/rocky/$releasever/AppStream/$basearch/os/"),
    ]
    assert all(
        x.gpgcheck and x.gpgkey == "http://mirror.example/rocky/RPM-GPG-KEY-Rocky-9" for x in repos
    )
    text = dnf.repo_file(repos)
    assert "[BaseOS]\nname=BaseOS\nbaseurl=http://mirror.example/rocky/$releasever/BaseOS" in text
    stream = recipe(tmp_path, 'distro = "centos-stream"\nrelease = "10"\nmirror = "file:///m"\n')
    assert (
        dnf.repositories(stream, "r")[0].baseurl == "file:///m/$releasever-stream/BaseOS/"
        "$basearch/os/"
    )


def test_extra_repositories_and_their_keys(tmp_path: Path) -> None:
    r = recipe(
        tmp_path,
        'distro = "fedora"\nrelease = "43"\n'
        '[[repositories]]\nname = "site"\nbaseurl = "file:///srv/site"\n'
        'gpgkey = "file:///srv/site/KEY"\n'
        '[[repositories]]\nname = "unsigned"\nbaseurl = "file:///srv/u"\n'
        "gpgcheck = false\n",
    )
    repos = dnf.repositories(r, "r.toml")
    assert [(x.name, x.gpgcheck, x.gpgkey) for x in repos] == [
        ("site", True, "file:///srv/site/KEY"),
        ("unsigned", False, None),
    ]
    bad = recipe(
        tmp_path,
        'distro = "fedora"\nrelease = "43"\n'
        '[[repositories]]\nname = "site"\nbaseurl = "file:///srv/site"\n',
    )
    with pytest.raises(RecipeError, match="names no key"):
        dnf.repositories(bad, "r.toml")


def test_rpm_database_follows_the_release(tmp_path: Path) -> None:
    rocky9 = recipe(tmp_path, 'distro = "rocky"\nrelease = "9"\n')
    assert dnf.rpm_macros(rocky9) == "%_dbpath /var/lib/rpm\n%_db_backend sqlite\n"
    alma8 = recipe(tmp_path, 'distro = "alma"\nrelease = "8.10"\n')
    assert dnf.rpm_macros(alma8) == "%_dbpath /var/lib/rpm\n%_db_backend bdb\n"
    for text in ('distro = "fedora"\nrelease = "43"\n', 'distro = "rocky"\nrelease = "10"\n'):
        assert "%_dbpath /usr/lib/sysimage/rpm\n" in dnf.rpm_macros(recipe(tmp_path, text))
    conf = dnf.dnf_conf(rocky9)
    assert "install_weak_deps=False" in conf and "keepcache=True" in conf
    assert "skip_if_unavailable=False" in conf and "gpgcheck=1" in conf


def test_unknown_repository_is_a_recipe_error(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text('distro = "rocky"\nrelease = "9"\ncomponents = ["BaseOS", "Nope"]\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert "components" in str(info.value) and "'Nope'" in str(info.value)
    assert "AppStream" in str(info.value)


def test_namespace_mounts_api_filesystems_and_the_cache() -> None:
    argv = dnf.namespace_argv(Path("/img"), Path("/cache/rpms"), ["dnf", "install", "x"])
    assert argv[:10] == [
        "unshare",
        "--mount",
        "--uts",
        "--ipc",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
        "--",
    ]
    plan = json.loads(argv[-1])
    assert plan["exec"] == ["dnf", "install", "x"]
    assert plan["mounts"][-1] == ["mount", "--bind", "/cache/rpms", "/img/var/cache/dnf"]
    # the image's private /dev (controller.build.builders.chroot), never the host's
    assert ["mknod", "-m", "0666", "/img/dev/null", "c", "1", "3"] in plan["mounts"]


def test_failures_name_the_field(tmp_path: Path) -> None:
    r = recipe(tmp_path, 'distro = "rocky"\nrelease = "9"\nmirror = "file:///m"\n')
    err = dnf.explain_failure(
        "No match for argument: bogus\nError: Unable to find a match", r, "r.toml"
    )
    assert err is not None and "r.toml: packages: unknown package 'bogus'" in str(err)
    err = dnf.explain_failure(
        "Error: Failed to download metadata for repo 'BaseOS': Cannot download repomd.xml",
        r,
        "r.toml",
    )
    assert err is not None and str(err).startswith("r.toml: mirror: cannot fetch from file:///m")
    assert dnf.explain_failure("something else", r, "r.toml") is None


def test_registry_and_distro_knowledge(tmp_path: Path) -> None:
    r = recipe(tmp_path, 'distro = "alma"\nrelease = "9"\n')
    assert builder_for(r).name == "dnf"
    info = distros.get("fedora")
    assert (
        distros.gpg_key_url(info, "43", None)
        == "file:///etc/pki/rpm-gpg/RPM-GPG-KEY-fedora-43-primary"
    )
    assert distros.release_major("9.4") == 9 and distros.release_major("rawhide") is None


def test_kernels_are_placed_in_boot(tmp_path: Path) -> None:
    modules = tmp_path / "usr/lib/modules/6.1.0-1.x86_64"
    modules.mkdir(parents=True)
    (modules / "vmlinuz").write_bytes(b"k")
    (tmp_path / "lib").symlink_to("usr/lib")
    assert package_backend.place_kernels(tmp_path) == ["6.1.0-1.x86_64"]
    assert (tmp_path / "boot/vmlinuz-6.1.0-1.x86_64").read_bytes() == b"k"
    assert package_backend.place_kernels(tmp_path) == []  # already there
