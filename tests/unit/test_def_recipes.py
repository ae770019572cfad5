"""Legacy .def recipes: parsing into the native model, the shipped examples, line-exact errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.build.builders import BuildRequest, builder_for, chroot, dnf
from controller.build.builders.apptainer import ApptainerBuilder, find_tool, tool_argv, tool_env
from controller.build.builders.legacy import DefBuilder, rpmdb_probe_argv, setup_argv, setup_env
from controller.core.errors import NetrootError, RecipeError
from controller.recipes import DefRecipe, DnfRecipe, MmdebstrapRecipe, distros, load_recipe
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


@pytest.mark.parametrize(
    ("name", "distro", "release"),
    [("rocky9-base.def", "rocky", "9"), ("fedora-base.def", "fedora", "43")],
)
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
    assert all(
        x.gpgkey == "http://mirror.example.org/rocky/RPM-GPG-KEY-Rocky-9"
        for x in native.repositories
    )
    assert native.gpgcheck and native.packages == ("vim-minimal", "wget")
    assert native.post == "    echo hello > /etc/hello\n"


def test_without_gpg_packages_are_not_checked_and_that_is_said() -> None:
    r = parse(
        YUM.replace("GPG: http://mirror.example.org/rocky/RPM-GPG-KEY-Rocky-%{OSVERSION}\n", "")
    )
    assert isinstance(r.native, DnfRecipe) and not r.native.gpgcheck
    assert any("not signature-checked" in n for n in r.notices)


def test_distro_comment_and_ignored_sections(tmp_path: Path) -> None:
    text = (
        "Bootstrap: dnf\nOSVersion: 43\n# netroot-distro: fedora\n"
        "MirrorURL: file:///srv/site/%{OSVERSION}/\nSetOpt: fastestmirror=1\n"
        "%labels\n  Author me\n%help\n  nothing\n%runscript\n  exec /bin/bash\n"
        "%post\n  true\n"
    )
    r = parse(text)
    assert r.native.distro == "fedora" and r.bootstrap == "dnf"
    assert r.native.repositories[0].baseurl == "file:///srv/site/43/"
    kinds = " ".join(r.notices)
    for word in ("SetOpt ignored", "%labels ignored", "%help ignored", "%runscript ignored"):
        assert word in kinds
    assert r.native.post == "  true\n"


def test_files_lines(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "a.conf").write_text("a")
    text = (
        "Bootstrap: debootstrap\nOSVersion: noble\n%files\n  conf/a.conf /etc/a.conf\n"
        "  conf\n# a comment\n"
    )
    r = parse(text, tmp_path)
    assert r.native.distro == "ubuntu"
    assert [(f.src, f.dest) for f in r.native.files] == [
        (tmp_path / "conf/a.conf", "/etc/a.conf"),
        (tmp_path / "conf", "/conf"),
    ]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (
            "Bootstrap: debootstrap\nOSVersion: bookworm\n%psot\n  true\n",
            3,
            "unknown section %psot",
        ),
        ("Bootstrap: docker\nFrom: debian:12\n", 1, "Bootstrap: docker is not supported"),
        (
            "Bootstrap: debootstrap\nOSVersion: bookworm\nColour: blue\n",
            3,
            "unknown header keyword 'Colour'",
        ),
        ("OSVersion: bookworm\nBootstrap: debootstrap\n", 1, "must start with `Bootstrap:`"),
        (
            "Bootstrap: debootstrap\nOSVersion: bookworm\nthis is not a header\n",
            3,
            "expected a header line",
        ),
        ("Bootstrap: debootstrap\nOSVersion: potato\n", 2, "OSVersion 'potato' is not a Debian"),
        ("Bootstrap: debootstrap\n\n", 1, "OSVersion is required"),
        (
            "Bootstrap: debootstrap\nOSVersion: bookworm\nInclude: vim bad!name\n",
            3,
            "invalid package name 'bad!name'",
        ),
        (
            "Bootstrap: debootstrap\nOSVersion: 12\n%post -c /bin/bash\n  true\n",
            3,
            "section arguments are not supported",
        ),
        (
            "Bootstrap: debootstrap\nOSVersion: 12\n%post\n  true\n%post\n  false\n",
            5,
            "a second %post section (the first is on line 3)",
        ),
        (
            "Bootstrap: debootstrap\nOSVersion: 12\n%files\n  no/such/file /etc/x\n",
            4,
            "no/such/file: no such file",
        ),
        ("Bootstrap: debootstrap\nOSVersion: 12\n%files\n  *.conf /etc/\n", 4, "wildcards"),
        (
            "Bootstrap: yum\nOSVersion: 9\nMirrorURL: http://10.1.2.3/os/\n",
            3,
            "cannot tell the distribution from MirrorURL",
        ),
        ("Bootstrap: yum\nOSVersion: 9\n# netroot-distro: debian\n", 3, "not built with dnf"),
        ("Bootstrap: yum\nOSVersion: 11\n# netroot-distro: rocky\n", 2, "unknown rocky release"),
    ],
)
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
    (tmp_path / "bad.toml").write_text(
        'builder = "apptainer"\ndefinition = "node.def"\npackages = ["x"]\n'
    )
    with pytest.raises(RecipeError, match=r"bad.toml: packages: unknown field"):
        load_recipe(tmp_path / "bad.toml")


def test_apptainer_argv_and_environment() -> None:
    assert tool_argv("apptainer", Path("/s/rootfs"), Path("/r/node.def")) == [
        "apptainer",
        "build",
        "--force",
        "--sandbox",
        "/s/rootfs",
        "/r/node.def",
    ]
    assert tool_argv("singularity", Path("/s/rootfs"), Path("/r/node.def"))[0] == "singularity"
    assert tool_env("apptainer", Path("/c")) == {
        "APPTAINER_CACHEDIR": "/c/apptainer/cache",
        "APPTAINER_TMPDIR": "/c/apptainer/tmp",
    }
    with pytest.raises(ValueError, match="unknown container tool"):
        tool_argv("docker", Path("/s"), Path("/d"))


def test_apptainer_not_installed_is_a_clear_error(tmp_path: Path) -> None:
    if find_tool("apptainer") is not None:
        pytest.skip("apptainer is installed here")
    (tmp_path / "node.def").write_text("Bootstrap: debootstrap\nOSVersion: bookworm\n")
    (tmp_path / "node.toml").write_text('builder = "apptainer"\ndefinition = "node.def"\n')
    recipe = load_recipe(tmp_path / "node.toml")
    request = BuildRequest(
        label="n",
        build_id="b",
        recipe=recipe,
        recipe_path=tmp_path / "node.toml",
        rootfs=tmp_path / "rootfs",
        log_file=tmp_path / "log",
        cache_dir=tmp_path / "cache",
        base_dir=REPO / "base",
    )
    with pytest.raises(NetrootError, match="apptainer is not installed"):
        builder_for(recipe).build(request, lambda _: None)


def test_setup_runs_on_the_host_over_an_overlay() -> None:
    scratch = chroot.Scratch(Path("/s/.setup-1"))
    argv = setup_argv(Path("/s/rootfs"), scratch, Path("/s/.setup-1/setup.sh"))
    assert argv[:5] == ["unshare", "--mount", "--uts", "--ipc", "--propagation"]
    assert '"overlay", "/s/rootfs"]' in argv[-1]  # mounted over the image's own path
    assert '"exec": ["/bin/sh", "-e", "/s/.setup-1/setup.sh"]' in argv[-1]
    env = setup_env(Path("/s/rootfs"), {"NETROOT_LABEL": "n"})
    assert env["SINGULARITY_ROOTFS"] == env["APPTAINER_ROOTFS"] == "/s/rootfs"


# The original live_netroot recipes (tests/legacy): what each becomes.
LEGACY = REPO / "tests" / "legacy"
VAULT = "http://vault.example.org/centos"
ARCHIVE = "http://archive.example.org/fedora/linux/releases"


@pytest.mark.parametrize(
    ("name", "distro", "release", "repos", "rpmdb"),
    [
        (
            "centos7-base.def",
            "centos",
            "7",
            [("base", f"{VAULT}/7/os/$basearch/"), ("updates", f"{VAULT}/7/updates/$basearch/")],
            ("bdb", "/var/lib/rpm"),
        ),
        (
            "centos8-base.def",
            "centos",
            "8",
            [("base", f"{VAULT}/8/BaseOS/$basearch/os/")],
            ("bdb", "/var/lib/rpm"),
        ),
        (
            "fedora32-base.def",
            "fedora",
            "32",
            [("base", f"{ARCHIVE}/32/Everything/$basearch/os/")],
            ("bdb", "/var/lib/rpm"),
        ),
    ],
)
def test_original_recipes_become_native_dnf_recipes(
    name: str, distro: str, release: str, repos: list[tuple[str, str]], rpmdb: tuple[str, str]
) -> None:
    r = load_recipe(LEGACY / name)
    assert isinstance(r, DefRecipe) and r.builder == "def" and r.bootstrap == "yum"
    native = r.native
    assert isinstance(native, DnfRecipe)
    assert (native.distro, native.release, native.suite) == (distro, release, release)
    assert native.mirror is None  # MirrorURL and UpdateURL are repository baseurls
    assert [(x.name, x.baseurl) for x in native.repositories] == repos
    assert (
        distros.rpmdb_backend(native.info, release),
        distros.rpmdb_path(native.info, release),
    ) == rpmdb
    assert dnf.rpm_macros(native) == f"%_dbpath {rpmdb[1]}\n%_db_backend {rpmdb[0]}\n"
    assert "%end" not in native.post and "%end" not in r.setup
    assert r.setup == "    rsync -a base/ ${SINGULARITY_ROOTFS}\n"
    assert "passwd --stdin root" in native.post  # kept, and warned about
    eol = [n for n in r.notices if "end-of-life" in n]
    assert len(eol) == 1 and f"its rpm database is {rpmdb[0]} in {rpmdb[1]}" in eol[0]
    assert eol[0].startswith(f"{LEGACY / name}:2: ")  # the OSVersion line
    argv = dnf.dnf_argv(native, Path("/s/rootfs"), Path("/c"), host_repos=False)
    assert argv[:5] == [
        "dnf",
        "--installroot=/s/rootfs",
        f"--releasever={release}",
        "--forcearch=x86_64",
        "--config=/c/dnf.conf",
    ]
    assert argv[5] == "--setopt=reposdir=/c/repos.d"  # the recipe's repositories, not the host's
    assert {"kernel", "dracut-network", "nfs-utils"} <= set(argv[argv.index("install") + 1 :])
    text = dnf.repo_file(dnf.repositories(native, name))
    for repo, url in repos:
        assert f"[{repo}]\nname={repo}\nbaseurl={url}\ngpgcheck=0\n" in text


def test_centos7_end_lines_and_header_case() -> None:
    r = load_recipe(LEGACY / "centos7-base.def")
    assert isinstance(r, DefRecipe) and isinstance(r.native, DnfRecipe)
    ends = [n for n in r.notices if "%end closes" in n]
    assert [n.split(": ", 1)[0] for n in ends] == [
        f"{LEGACY / 'centos7-base.def'}:{n}" for n in (12, 31)
    ]
    assert "%end closes %setup" in ends[0] and "%end closes %post" in ends[1]
    assert r.native.post.startswith("    yum install -q -y epel-release\n")
    assert r.native.post.endswith("    systemctl enable $serv || true\ndone\n")
    assert r.native.packages == ("yum",)
    assert r.lines == {"setup": 10, "post": 14}


def test_plaintext_password_warnings_name_the_line() -> None:
    r = load_recipe(LEGACY / "centos7-base.def")
    assert isinstance(r, DefRecipe) and len(r.warnings) == 1
    assert r.warnings[0].startswith(
        f"{LEGACY / 'centos7-base.def'}:25: %post pipes a plaintext password to passwd"
    )
    hashed = load_recipe(LEGACY / "centos7-hpcnode.def")
    assert isinstance(hashed, DefRecipe) and hashed.warnings == ()  # chpasswd -e takes a crypt hash
    text = (
        "Bootstrap: debootstrap\nOSVersion: 12\n%post\n  # echo x | passwd --stdin root\n"
        "  echo root:secret | chpasswd\n  printf 'a\\na\\n' | /bin/passwd root\n"
        "  echo root:$6$x | chpasswd --encrypted\n"
    )
    assert [w.split(": ")[0:2] for w in parse(text).warnings] == [
        ["x.def:5", "%post pipes a plaintext password to chpasswd"],
        ["x.def:6", "%post pipes a plaintext password to passwd"],
    ]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("Bootstrap: debootstrap\nOSVersion: 12\n%end\n", 3, "%end outside a section"),
        (
            "Bootstrap: debootstrap\nOSVersion: 12\n%post\n true\n%end\n true\n",
            6,
            "text after %end (line 5) outside any section",
        ),
        (
            "Bootstrap: debootstrap\nOSVersion: 12\n%post\n true\n%end --x\n",
            5,
            "%end takes no arguments",
        ),
        (
            "BootStrap: yum\nOSVersion: 7\n# netroot-distro: centos\n",
            2,
            "OSVersion 7: CentOS Linux 7 is end-of-life (since 2024-06-30)",
        ),
        (
            "Bootstrap: yum\nOSVersion: 9\n# netroot-distro: centos\nMirrorURL: file:///m/\n",
            2,
            "OSVersion: unknown centos release '9'; allowed: end-of-life 7, 8",
        ),
    ],
)
def test_legacy_errors_name_the_line(text: str, line: int, words: str) -> None:
    message = error(text)
    assert message.startswith(f"x.def:{line}: "), message
    assert words in message, message


def test_end_then_next_section_and_stream_urls() -> None:
    r = parse(
        "bootstrap: yum\nosversion: 9\nmirrorurl: http://m.example.org/centos/9-stream/\n"
        "%post\n  a\n%END\n\n# between sections\n%environment\n  export A=1\n"
    )
    assert r.native.distro == "centos-stream"  # a maintained release: CentOS Stream
    assert r.native.post == "  a\n" and r.environment == "  export A=1\n"
    assert not [n for n in r.notices if "end-of-life" in n]


def test_centos_8_linux_or_stream_from_the_mirror_url() -> None:
    linux = parse(
        "Bootstrap: yum\nOSVersion: 8\nMirrorURL: http://v.example.org/centos/8/BaseOS/\n"
    )
    stream = parse(
        "Bootstrap: yum\nOSVersion: 8\nMirrorURL: http://v.example.org/centos/8-stream/BaseOS/\n"
    )
    assert (linux.native.distro, stream.native.distro) == ("centos", "centos-stream")
    assert any("CentOS Stream 8 is end-of-life (since 2024-05-31)" in n for n in stream.notices)
    assert any("its rpm database is bdb" in n for n in stream.notices)


def test_end_of_life_releases_need_named_sources(tmp_path: Path) -> None:
    def toml(text: str) -> Path:
        path = tmp_path / "r.toml"
        path.write_text(text)
        return path

    with pytest.raises(RecipeError, match=r"CentOS Linux 7 is end-of-life .*\[\[repositories\]\]"):
        load_recipe(toml('distro = "centos"\nrelease = "7"\n'))
    with pytest.raises(RecipeError, match=r"Fedora 32 is end-of-life: .*a mirror or"):
        load_recipe(toml('distro = "fedora"\nrelease = "32"\n'))
    with pytest.raises(RecipeError, match=r"unknown fedora release '19'"):
        load_recipe(toml('distro = "fedora"\nrelease = "19"\n'))
    old = load_recipe(toml('distro = "fedora"\nrelease = "32"\nmirror = "file:///archive"\n'))
    assert isinstance(old, DnfRecipe)
    assert (
        dnf.repositories(old, "r")[0].baseurl
        == "file:///archive/releases/$releasever/Everything/$basearch/os/"
    )
    c7 = load_recipe(
        toml(
            'distro = "centos"\nrelease = "7"\ngpgcheck = false\n'
            '[[repositories]]\nname = "os"\nbaseurl = "file:///v/7/os/x86_64/"\n'
        )
    )
    assert isinstance(c7, DnfRecipe) and c7.components == ()
    assert load_recipe(toml('distro = "fedora"\nrelease = "43"\n')).release == "43"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("distro", "release", "backend", "path"),
    [
        ("centos", "7", "bdb", "/var/lib/rpm"),
        ("rocky", "8", "bdb", "/var/lib/rpm"),
        ("alma", "9", "sqlite", "/var/lib/rpm"),
        ("rocky", "10", "sqlite", "/usr/lib/sysimage/rpm"),
        ("fedora", "28", "bdb", "/var/lib/rpm"),
        ("fedora", "32", "bdb", "/var/lib/rpm"),
        ("fedora", "33", "sqlite", "/var/lib/rpm"),
        ("fedora", "36", "sqlite", "/usr/lib/sysimage/rpm"),
        ("fedora", "rawhide", "sqlite", "/usr/lib/sysimage/rpm"),
    ],
)
def test_rpm_database_format_per_release(
    distro: str, release: str, backend: str, path: str
) -> None:
    info = distros.get(distro)
    assert (distros.rpmdb_backend(info, release), distros.rpmdb_path(info, release)) == (
        backend,
        path,
    )


def test_rpmdb_probe_argv() -> None:
    assert rpmdb_probe_argv(Path("/tmp/x"), "bdb") == [
        "rpmdb",
        "--initdb",
        "--dbpath",
        "/tmp/x",
        "--define",
        "_db_backend bdb",
    ]
