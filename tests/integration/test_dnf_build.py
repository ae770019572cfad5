"""The dnf backend end to end, against a local RPM repository the test builds itself.

No Fedora or Rocky mirror is reachable from here, so the packages are made on
the spot with Debian's rpmbuild and createrepo_c: a shell (the host's busybox
and its libraries), a fake kernel that ships only /usr/lib/modules/KVER/vmlinuz
as Fedora's does, a fake `dracut` script that writes the initramfs it is asked
for, and empty packages standing for the rest of what a netboot node needs.
netroot then runs real `dnf --installroot` against file:// repositories laid
out like a mirror, dracut inside the image, the post script, and commits a
version through `python3 -m controller build`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KVER = "6.99.0-1.netroot.x86_64"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

FAKE_DRACUT = """#!/bin/sh
# netroot test: stands in for dracut and records how it was called
for out; do :; done
echo "fake initramfs; dracut $*" > "$out"
"""
BOOT_STANDINS = ("systemd", "nfs-utils", "procps-ng", "iproute", "zstd")
BUSYBOX_APPLETS = ("sh", "echo", "cat", "mkdir", "ls", "rm", "chmod", "test", "[", "env", "id")


@dataclass
class Package:
    """A noarch package: files (path -> bytes or ('link', target)) and requirements."""

    name: str
    files: dict[str, bytes | tuple[str, str]]
    requires: tuple[str, ...] = ()
    dirs: dict[str, str] = field(default_factory=dict)  # path -> mode

    def spec(self, src: Path) -> str:
        lines = [
            f"Name: {self.name}",
            "Version: 1.0",
            "Release: 1",
            "License: MIT",
            f"Summary: netroot test package {self.name}",
            "BuildArch: noarch",
            "AutoReqProv: no",
        ]
        lines += [f"Requires: {r}" for r in self.requires]
        lines += [
            "%description",
            "netroot test package",
            "%install",
            "mkdir -p %{buildroot}",
            f"cp -a {src}/. %{{buildroot}}/",
            "%files",
        ]
        for path, mode in self.dirs.items():
            lines.append(f"%dir %attr({mode},root,root) {path}")
        lines += sorted(self.files)
        return "\n".join(lines) + "\n"


def _host_busybox() -> dict[str, bytes | tuple[str, str]]:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox is not installed: run .ci/setup")
    files: dict[str, bytes | tuple[str, str]] = {"/bin/busybox": Path(busybox).read_bytes()}
    out = subprocess.run(["ldd", busybox], capture_output=True, text=True, check=True).stdout
    for lib in re.findall(r"(/\S+)", out):
        files[lib] = Path(lib).read_bytes()
    for applet in BUSYBOX_APPLETS:
        files[f"/bin/{applet}"] = ("link", "busybox")
    return files


def _packages() -> tuple[list[Package], list[Package]]:
    """(packages of the base repository, packages of the extra one)."""
    base = [
        Package(
            "filesystem",
            {"/etc/os-release": b'ID=netroot-test\nVERSION_ID="9"\n'},
            dirs={"/tmp": "1777", "/root": "0700", "/var": "0755", "/boot": "0755"},
        ),
        Package("busybox", _host_busybox(), requires=("filesystem",)),
        Package("kernel", {f"/usr/lib/modules/{KVER}/vmlinuz": b"fake kernel " + KVER.encode()}),
        Package("dracut", {"/usr/bin/dracut": FAKE_DRACUT.encode()}, requires=("busybox",)),
        Package(
            "dracut-network",
            {"/usr/lib/dracut/modules.d/40network/README": b"net\n"},
            requires=("dracut",),
        ),
    ]
    base += [
        Package(name, {f"/usr/share/doc/{name}/README": b"stand-in\n"}) for name in BOOT_STANDINS
    ]
    extra = [
        Package("netroot-test-tool", {"/usr/share/netroot-test/hello": b"hello\n"}),
        Package("netroot-site-tool", {"/usr/share/netroot-test/site": b"site\n"}),
    ]
    return base, extra


def _rpmbuild(pkg: Package, work: Path, out: Path) -> None:
    src = work / "src" / pkg.name
    for path, content in pkg.files.items():
        target = src / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, tuple):
            target.symlink_to(content[1])
        else:
            target.write_bytes(content)
            target.chmod(0o755 if content.startswith((b"#!", b"\x7fELF")) else 0o644)
    for path in pkg.dirs:
        (src / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    spec = work / f"{pkg.name}.spec"
    spec.write_text(pkg.spec(src))
    defines = {
        "_topdir": str(work / "top"),
        "_rpmdir": str(out),
        "_build_name_fmt": "%%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm",
        "_binaries_in_noarch_packages_terminate_build": "0",
        "__os_install_post": "%{nil}",
        "__spec_install_post": "%{nil}",
        "debug_package": "%{nil}",
        "_build_id_links": "none",
    }
    argv = ["rpmbuild", "-bb", "--quiet"]
    for key, value in defines.items():
        argv += ["--define", f"{key} {value}"]
    subprocess.run(
        [*argv, str(spec)], check=True, capture_output=True, env={**os.environ, "HOME": str(work)}
    )


def _createrepo(directory: Path) -> None:
    subprocess.run(["createrepo_c", "--quiet", str(directory)], check=True)


@dataclass
class RpmLab:
    """Repositories, config and state under one temporary directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "netroot.toml"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def mirror(self) -> Path:
        """Laid out like an EL mirror: 9/BaseOS/x86_64/os, 9/AppStream/x86_64/os."""
        return self.root / "mirror"

    @property
    def site(self) -> Path:
        """A flat repository named by baseurl ([[repositories]])."""
        return self.root / "site"

    def recipe(self, label: str) -> Path:
        return self.root / f"{label}.toml"

    def netroot(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controller", "--config", str(self.config), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )

    def build(self, label: str) -> dict[str, object]:
        done = self.netroot("--json", "build", label, "--activate")
        assert done.returncode == 0, done.stderr[-4000:]
        data: dict[str, object] = json.loads(done.stdout)["version"]
        return data

    def last_log(self, label: str) -> str:
        return sorted((self.state / "logs" / label).glob("*.log"))[-1].read_text()

    def versions(self, label: str) -> list[str]:
        done = self.netroot("--json", "versions", label)
        assert done.returncode == 0, done.stderr
        return [v["version"] for v in json.loads(done.stdout)]


def rocky_recipe(
    lab: RpmLab, extra: str = "", packages: str = '"netroot-test-tool", "netroot-site-tool"'
) -> str:
    return f"""
distro = "rocky"
release = "9"
mirror = "file://{lab.mirror}"
gpgcheck = false
packages = [{packages}]
{extra}
[[repositories]]
name = "site"
baseurl = "file://{lab.site}"
"""


POST = '''post = """
echo "post ran in $NETROOT_LABEL" > /etc/netroot-post
cat /usr/share/netroot-test/hello >> /etc/netroot-post
"""
'''


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> RpmLab:
    for tool in ("dnf", "rpmbuild", "createrepo_c"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run .ci/setup")
    lab = RpmLab(tmp_path_factory.mktemp("rpmlab"))
    work = lab.root / "rpmbuild"
    base_pkgs, extra_pkgs = _packages()
    baseos = lab.mirror / "9" / "BaseOS" / "x86_64" / "os"
    appstream = lab.mirror / "9" / "AppStream" / "x86_64" / "os"
    for pkg in base_pkgs:
        _rpmbuild(pkg, work, baseos)
    _rpmbuild(extra_pkgs[0], work, appstream)
    _rpmbuild(extra_pkgs[1], work, lab.site)
    for repo in (baseos, appstream, lab.site):
        _createrepo(repo)
    lab.config.write_text(f"""
state_dir = "{lab.state}"
recipes_dir = "{lab.root}"
base_dir = "{REPO / "base"}"
overlays_dir = "{lab.root / "overlays"}"
export_root = "{lab.root / "export"}"
tftp_root = "{lab.root / "tftp"}"

[labels.rocky]
recipe = "rocky.toml"

[labels.fedora]
recipe = "fedora.toml"

[labels.broken]
recipe = "broken.toml"
""")
    lab.recipe("rocky").write_text(rocky_recipe(lab, POST))
    return lab


def host_mounts_under(path: Path) -> list[str]:
    prefix = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


@pytest.fixture(scope="module")
def rocky(lab: RpmLab) -> dict[str, object]:
    return lab.build("rocky")


def test_dnf_installs_from_the_local_repository(lab: RpmLab, rocky: dict[str, object]) -> None:
    version = str(rocky["version"])
    vdir = lab.state / "images" / "rocky" / version
    rootfs = vdir / "rootfs"
    assert rocky["builder"] == "dnf" and rocky["kernel_version"] == KVER
    # the kernel placed in /boot from /usr/lib/modules, the initramfs made inside the image
    assert (vdir / "boot" / "vmlinuz").read_bytes() == b"fake kernel " + KVER.encode()
    initrd = (vdir / "boot" / "initrd.img").read_text()
    assert initrd.startswith("fake initramfs; dracut -N --force --add nfs network")
    assert f"/boot/initramfs-{KVER}.img" in initrd
    # packages from the mirror's BaseOS and AppStream and from the extra repository
    assert (rootfs / "usr/share/netroot-test/hello").read_text() == "hello\n"
    assert (rootfs / "usr/share/netroot-test/site").read_text() == "site\n"
    installed = subprocess.run(
        ["rpm", "--root", str(rootfs), "--dbpath", "/var/lib/rpm", "-qa", "--qf", "%{NAME}\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {
        "kernel",
        "dracut",
        "dracut-network",
        "busybox",
        "netroot-test-tool",
        "netroot-site-tool",
        *BOOT_STANDINS,
    } <= set(installed)
    assert (rootfs / "var/lib/rpm/rpmdb.sqlite").is_file()  # where Rocky 9's rpm looks
    # base/ went in, the post script ran inside the image, the version is stamped
    assert (rootfs / "etc/dracut.conf.d/90-netroot.conf").is_file()
    assert (rootfs / "etc/netroot-post").read_text() == "post ran in rocky\nhello\n"
    assert (rootfs / "etc/netroot/version").read_text().strip() == version
    assert not (rootfs / "root/.rpmdb").exists()  # the host rpm's own default stayed out
    assert host_mounts_under(lab.state) == []
    log = lab.last_log("rocky")
    assert "--installroot=" in log and "Complete!" in log


def test_post_only_change_reuses_the_package_stage(lab: RpmLab, rocky: dict[str, object]) -> None:
    lab.recipe("rocky").write_text(rocky_recipe(lab, 'post = "echo second > /etc/netroot-post"'))
    second = lab.build("rocky")
    log = lab.last_log("rocky")
    assert "reusing package stage" in log
    assert "--installroot=" not in log and "Installing" not in log
    rootfs = lab.state / "images" / "rocky" / str(second["version"]) / "rootfs"
    assert (rootfs / "etc/netroot-post").read_text() == "second\n"
    first = lab.state / "images" / "rocky" / str(rocky["version"]) / "rootfs"
    assert (first / "etc/netroot-post").read_text() == "post ran in rocky\nhello\n"


def test_fedora_puts_the_rpm_database_in_sysimage(lab: RpmLab) -> None:
    baseos = lab.mirror / "9" / "BaseOS" / "x86_64" / "os"
    lab.recipe("fedora").write_text(f"""
distro = "fedora"
release = "43"
gpgcheck = false
packages = ["netroot-site-tool"]
post = "echo fedora > /etc/netroot-post"
[[repositories]]
name = "local"
baseurl = "file://{baseos}"
[[repositories]]
name = "site"
baseurl = "file://{lab.site}"
""")
    built = lab.build("fedora")
    rootfs = lab.state / "images" / "fedora" / str(built["version"]) / "rootfs"
    assert (rootfs / "usr/lib/sysimage/rpm/rpmdb.sqlite").is_file()
    assert not (rootfs / "var/lib/rpm").exists()
    assert (rootfs / "etc/netroot-post").read_text() == "fedora\n"


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ("packages", "packages", "netroot-no-such-package"),
        ("", "mirror", "cannot fetch"),
        ('post = "echo failing on purpose; exit 7"\n', "post", "status 7"),
    ],
)
def test_bad_recipe_fails_cleanly(
    lab: RpmLab, rocky: dict[str, object], extra: str, field: str, words: str
) -> None:
    text = (
        rocky_recipe(lab, extra)
        if extra != "packages"
        else rocky_recipe(lab, packages='"netroot-test-tool", "netroot-no-such-package"')
    )
    if field == "mirror":
        text = text.replace(f"file://{lab.mirror}", f"file://{lab.root}/no-such-mirror")
    lab.recipe("broken").write_text(text)
    before = lab.versions("broken")
    done = lab.netroot("build", "broken")
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("netroot: error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert str(lab.recipe("broken")) in errors[0], errors[0]
    assert f": {field}: " in errors[0] and words in errors[0], errors[0]
    assert lab.versions("broken") == before
    assert host_mounts_under(lab.state) == []
