"""The shipped Debian .def (`Bootstrap: debootstrap`) built for real through the legacy path.

mmdebstrap installs the packages; %setup runs on the host, %files and
%environment are copied in, %post runs inside the image. Set
NETROOT_TEST_DEB_CACHE to a directory of bookworm amd64 .debs to skip most
downloads (as tests/integration/test_build_debian12.py does).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 1500
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(TIMEOUT + 300)]
BROKEN_DEF = """\
Bootstrap: debootstrap
OSVersion: bookworm

%post
    true
%psot
    echo typo
"""


class Lab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "netroot.toml"
        self.state = root / "state"

    def netroot(self, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controller", "--config", str(self.config), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    if shutil.which("mmdebstrap") is None:
        pytest.fail("mmdebstrap is not installed: run .ci/setup")
    lab = Lab(tmp_path_factory.mktemp("deflab"))
    (lab.root / "broken.def").write_text(BROKEN_DEF)
    lab.config.write_text(f"""
state_dir = "{lab.state}"
recipes_dir = "{REPO / "recipes"}"
base_dir = "{REPO / "base"}"
overlays_dir = "{lab.root / "overlays"}"
export_root = "{lab.root / "export"}"
tftp_root = "{lab.root / "tftp"}"

[labels.legacy]
recipe = "debian12-base.def"

[labels.broken]
recipe = "{lab.root / "broken.def"}"
""")
    seed = os.environ.get("NETROOT_TEST_DEB_CACHE")
    if seed:
        debs = lab.state / "cache" / "debs" / "debian-bookworm-amd64"
        debs.mkdir(parents=True)
        for deb in Path(seed).glob("*.deb"):
            os.link(deb, debs / deb.name)
    return lab


def host_mounts_under(path: Path) -> list[str]:
    prefix = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def test_debian_def_builds_with_every_section(lab: Lab) -> None:
    done = lab.netroot("--json", "build", "legacy", "--activate")
    assert done.returncode == 0, done.stderr[-4000:]
    manifest = json.loads(done.stdout)["version"]
    assert manifest["builder"] == "def"
    vdir = lab.state / "images" / "legacy" / manifest["version"]
    rootfs = vdir / "rootfs"
    assert (vdir / "boot" / "vmlinuz").stat().st_size > 1_000_000
    assert (vdir / "boot" / "initrd.img").stat().st_size > 1_000_000
    # %setup on the host (both variables set), then %post inside the image, in that order
    assert (rootfs / "etc/netroot-build-info").read_text() == (
        "debian12-base.def, %setup on the build host\n%post ran inside the image\n"
    )
    # %files from beside the .def, %environment for login shells
    expected = (REPO / "recipes" / "def-files" / "issue.net").read_text()
    assert (rootfs / "etc/issue.net").read_text() == expected
    assert "export LC_ALL=C.UTF-8" in (rootfs / "etc/profile.d/netroot-environment.sh").read_text()
    assert (rootfs / "etc/shadow").read_text().startswith("root:$6$netrootTestSalt$")
    assert (rootfs / "etc/fstab").read_text() == ""
    assert (rootfs / "etc/netroot/version").read_text().strip() == manifest["version"]
    assert (rootfs / "etc/dracut.conf.d/90-netroot.conf").is_file()  # base/ went in
    log = sorted((lab.state / "logs" / "legacy").glob("*.log"))[-1].read_text()
    assert "%runscript ignored" in log
    # the package stage was cached before %setup and %post and stays clean of them
    stages = list((lab.state / "cache" / "pkgstage").glob("*/rootfs"))
    assert stages
    for stage in stages:
        assert not (stage / "etc/netroot-build-info").exists()
        assert (stage / "etc/issue.net").read_text() != expected
    assert host_mounts_under(lab.state) == []


def test_malformed_def_fails_naming_the_line(lab: Lab) -> None:
    done = lab.netroot("build", "broken", timeout=120)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("netroot: error:")]
    assert errors == [
        f"netroot: error: {lab.root / 'broken.def'}:6: unknown section %psot "
        "(allowed: %setup, %post, %files, %environment, %runscript, %startscript, "
        "%test, %labels, %help, %pre)"
    ], done.stderr
    assert not (lab.state / "images" / "broken").exists() or not [
        p for p in (lab.state / "images" / "broken").iterdir() if p.name[:1].isdigit()
    ]
