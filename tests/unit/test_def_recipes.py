"""Legacy .def recipes: parsing into the native model, the shipped examples, line-exact errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.builders import BuildRequest, builder_for, chroot
from controller.builders.apptainer import ApptainerBuilder, find_tool, tool_argv, tool_env
from controller.builders.legacy import DefBuilder, setup_argv, setup_env
from controller.errors import NetrootError, RecipeError
from controller.recipes import DefRecipe, DnfRecipe, MmdebstrapRecipe, load_recipe
from controller.recipes.legacy_def import parse_def

REPO = Path(__file__).resolve().parents[2]

YUM = """\
BootStrap: yum
OSVersion: 9
MirrorURL: http://mirror.example.org/rocky/%{OSVERSION}/BaseOS/$basearch/os/
UpdateURL: http://mirror.example.org/rocky/%{OSVERSION}/AppStream/$basearch/os/
GPG: http://mirror.example.org/rocky/RPM-GPG-KEY-Rocky-%{OSVERSION}
Include: vim-minimal, wget

%post
    echo hello > /etc/hello
"""


def parse(text: str, root: Path = REPO) -> DefRecipe:
    return parse_def(text, source="x.def", root=root)


def error(text: str, root: Path = REPO) -> str:
    with pytest.raises(RecipeError) as info:
        parse(text, root)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_shipped_debian_def_maps_to_mmdebstrap() -> None:
    r = load_recipe(REPO / "recipes" / "debian12-base.def")
    assert isinstance(r, DefRecipe) and r.builder == "def" and r.bootstrap == "debootstrap"
    native = r.native
    assert isinstance(native, MmdebstrapRecipe)
    assert (native.distro, native.suite, native.mirror) == ("debian", "bookworm", None)
    assert {"openssh-server", "tzdata", "linux-image-amd64"} <= set(native.package_set)
    assert [(f.src.name, f.dest) for f in native.files] == [("issue.net", "/etc/issue.net")]
    assert "SINGULARITY_ROOTFS" in r.setup and "chpasswd" in native.post
    assert r.environment.strip() == "export LC_ALL=C.UTF-8"
    assert any("%runscript ignored" in n for n in r.notices)
    assert builder_for(r).name == "def"


@pytest.mark.parametrize(("name", "distro", "release"), [
    ("rocky9-base.def", "rocky", "9"), ("fedora-base.def", "fedora", "43")])
def test_shipped_rpm_defs_map_to_dnf(name: str, distro: str, release: str) -> None:
    r = load_recipe(REPO / "recipes" / name)
    assert isinstance(r, DefRecipe) and isinstance(r.native, DnfRecipe)
    assert (r.native.distro, r.native.release) == (distro, release)
    assert r.native.repositories == ()  # no mirror named: the build host's repositories
    assert "dnf" in r.native.packages and "systemctl enable sshd" in r.native.post


def test_yum_header_becomes_repositories() -> None:
    r = parse(YUM)
    native = r.native
    assert isinstance(native, DnfRecipe)
    assert native.distro == "rocky"  # from the words of MirrorURL
    assert [(x.name, x.baseurl) for x in native.repositories] == [
        ("base", "http://mirror.example.org/rocky/9/BaseOS/$basearch/os/"),
        ("updates", "http://mirror.example.org/rocky/9/AppStream/$basearch/os/"),
    ]
    assert all(x.gpgkey == "http://mirror.example.org/rocky/RPM-GPG-KEY-Rocky-9"
               for x in native.repositories)
    assert native.gpgcheck and native.packages == ("vim-minimal", "wget")
    assert native.post == "    echo hello > /etc/hello\n"


def test_without_gpg_packages_are_not_checked_and_that_is_said() -> None:
    r = parse(YUM.replace("GPG: http://mirror.example.org/rocky/RPM-GPG-KEY-Rocky-%{OSVERSION}\n",
                          ""))
    assert isinstance(r.native, DnfRecipe) and not r.native.gpgcheck
    assert any("not signature-checked" in n for n in r.notices)


def test_distro_comment_and_ignored_sections(tmp_path: Path) -> None:
    text = ("Bootstrap: dnf\nOSVersion: 43\n# netroot-distro: fedora\n"
            "MirrorURL: file:///srv/site/%{OSVERSION}/\nSetOpt: fastestmirror=1\n"
            "%labels\n  Author me\n%help\n  nothing\n%runscript\n  exec /bin/bash\n"
            "%post\n  true\n")
    r = parse(text)
    assert r.native.distro == "fedora" and r.bootstrap == "dnf"
    assert r.native.repositories[0].baseurl == "file:///srv/site/43/"  # type: ignore[union-attr]
    kinds = " ".join(r.notices)
    for word in ("SetOpt ignored", "%labels ignored", "%help ignored", "%runscript ignored"):
        assert word in kinds
    assert r.native.post == "  true\n"


def test_files_lines(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "a.conf").write_text("a")
    text = ("Bootstrap: debootstrap\nOSVersion: noble\n%files\n  conf/a.conf /etc/a.conf\n"
            "  conf\n# a comment\n")
    r = parse(text, tmp_path)
    assert r.native.distro == "ubuntu"
    assert [(f.src, f.dest) for f in r.native.files] == [
        (tmp_path / "conf/a.conf", "/etc/a.conf"), (tmp_path / "conf", "/conf")]


@pytest.mark.parametrize(("text", "line", "words"), [
    ("Bootstrap: debootstrap\nOSVersion: bookworm\n%psot\n  true\n", 3, "unknown section %psot"),
    ("Bootstrap: docker\nFrom: debian:12\n", 1, "Bootstrap: docker is not supported"),
    ("Bootstrap: debootstrap\nOSVersion: bookworm\nColour: blue\n", 3,
     "unknown header keyword 'Colour'"),
    ("OSVersion: bookworm\nBootstrap: debootstrap\n", 1, "must start with `Bootstrap:`"),
    ("Bootstrap: debootstrap\nOSVersion: bookworm\nthis is not a header\n", 3,
     "expected a header line"),
    ("Bootstrap: debootstrap\nOSVersion: potato\n", 2, "OSVersion 'potato' is not a Debian"),
    ("Bootstrap: debootstrap\n\n", 1, "OSVersion is required"),
    ("Bootstrap: debootstrap\nOSVersion: bookworm\nInclude: vim bad!name\n", 3,
     "invalid package name 'bad!name'"),
    ("Bootstrap: debootstrap\nOSVersion: 12\n%post -c /bin/bash\n  true\n", 3,
     "section arguments are not supported"),
    ("Bootstrap: debootstrap\nOSVersion: 12\n%post\n  true\n%post\n  false\n", 5,
     "a second %post section (the first is on line 3)"),
    ("Bootstrap: debootstrap\nOSVersion: 12\n%files\n  no/such/file /etc/x\n", 4,
     "no/such/file: no such file"),
    ("Bootstrap: debootstrap\nOSVersion: 12\n%files\n  *.conf /etc/\n", 4, "wildcards"),
    ("Bootstrap: yum\nOSVersion: 9\nMirrorURL: http://10.1.2.3/os/\n", 3,
     "cannot tell the distribution from MirrorURL"),
    ("Bootstrap: yum\nOSVersion: 9\n# netroot-distro: debian\n", 3, "not built with dnf"),
    ("Bootstrap: yum\nOSVersion: 11\n# netroot-distro: rocky\n", 2, "unknown rocky release"),
])
def test_malformed_def_names_the_line(text: str, line: int, words: str) -> None:
    message = error(text)
    assert message.startswith(f"x.def:{line}: "), message
    assert words in message, message


def test_toml_recipe_may_choose_apptainer(tmp_path: Path) -> None:
    (tmp_path / "node.def").write_text("Bootstrap: debootstrap\nOSVersion: bookworm\n")
    (tmp_path / "node.toml").write_text('builder = "apptainer"\ndefinition = "node.def"\n')
    r = load_recipe(tmp_path / "node.toml")
    assert isinstance(r, DefRecipe) and r.builder == "apptainer"
    builder = builder_for(r)
    assert isinstance(builder, ApptainerBuilder) and builder.name == "apptainer"
    (tmp_path / "s.toml").write_text('builder = "singularity"\ndefinition = "node.def"\n')
    assert builder_for(load_recipe(tmp_path / "s.toml")).name == "singularity"
    (tmp_path / "own.toml").write_text('builder = "def"\ndefinition = "node.def"\n')
    assert isinstance(builder_for(load_recipe(tmp_path / "own.toml")), DefBuilder)
    (tmp_path / "bad.toml").write_text('builder = "apptainer"\ndefinition = "node.def"\n'
                                       'packages = ["x"]\n')
    with pytest.raises(RecipeError, match=r"bad.toml: packages: unknown field"):
        load_recipe(tmp_path / "bad.toml")


def test_apptainer_argv_and_environment() -> None:
    assert tool_argv("apptainer", Path("/s/rootfs"), Path("/r/node.def")) == [
        "apptainer", "build", "--force", "--sandbox", "/s/rootfs", "/r/node.def"]
    assert tool_argv("singularity", Path("/s/rootfs"), Path("/r/node.def"))[0] == "singularity"
    assert tool_env("apptainer", Path("/c")) == {"APPTAINER_CACHEDIR": "/c/apptainer/cache",
                                                 "APPTAINER_TMPDIR": "/c/apptainer/tmp"}
    with pytest.raises(ValueError, match="unknown container tool"):
        tool_argv("docker", Path("/s"), Path("/d"))


def test_apptainer_not_installed_is_a_clear_error(tmp_path: Path) -> None:
    if find_tool("apptainer") is not None:
        pytest.skip("apptainer is installed here")
    (tmp_path / "node.def").write_text("Bootstrap: debootstrap\nOSVersion: bookworm\n")
    (tmp_path / "node.toml").write_text('builder = "apptainer"\ndefinition = "node.def"\n')
    recipe = load_recipe(tmp_path / "node.toml")
    request = BuildRequest(label="n", build_id="b", recipe=recipe,
                           recipe_path=tmp_path / "node.toml", rootfs=tmp_path / "rootfs",
                           log_file=tmp_path / "log", cache_dir=tmp_path / "cache",
                           base_dir=REPO / "base")
    with pytest.raises(NetrootError, match="apptainer is not installed"):
        builder_for(recipe).build(request, lambda _: None)


def test_setup_runs_on_the_host_over_an_overlay() -> None:
    scratch = chroot.Scratch(Path("/s/.setup-1"))
    argv = setup_argv(Path("/s/rootfs"), scratch, Path("/s/.setup-1/setup.sh"))
    assert argv[:3] == ["unshare", "--mount", "--propagation"]
    assert '"overlay", "/s/rootfs"]' in argv[-1]  # mounted over the image's own path
    assert '"exec": ["/bin/sh", "-e", "/s/.setup-1/setup.sh"]' in argv[-1]
    env = setup_env(Path("/s/rootfs"), {"NETROOT_LABEL": "n"})
    assert env["SINGULARITY_ROOTFS"] == env["APPTAINER_ROOTFS"] == "/s/rootfs"
