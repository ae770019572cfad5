"""`netroot build debian12` for real: mmdebstrap, dracut inside the image, the package-stage cache.

One module-wide state directory: the cold build runs once, later tests reuse
its package stage (the point of the cache). Set NETROOT_TEST_DEB_CACHE to a
directory of bookworm amd64 .debs to skip most downloads on a developer
machine; CI starts cold.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.build.builders import chroot

REPO = Path(__file__).resolve().parents[2]
COLD_TIMEOUT = 1500  # a cold build downloads ~170 packages
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(COLD_TIMEOUT + 300)]


@dataclass
class Lab:
    """A config whose recipes_dir is the repository's recipes/, state under tmp."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "netroot.toml"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def edit_recipe(self) -> Path:
        """The recipe of label `edit`, rewritten by the tests (it extends debian12)."""
        return self.root / "edit.toml"

    def netroot(
        self, *args: str, timeout: float = COLD_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controller", "--config", str(self.config), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def versions(self, label: str) -> list[dict[str, object]]:
        done = self.netroot("--json", "versions", label, timeout=60)
        assert done.returncode == 0, done.stderr
        data: list[dict[str, object]] = json.loads(done.stdout)
        return data

    def active(self, label: str) -> str | None:
        return next((str(v["version"]) for v in self.versions(label) if v["active"]), None)

    def last_log(self, label: str) -> str:
        logs = sorted((self.state / "logs" / label).glob("*.log"))
        return logs[-1].read_text(errors="replace")

    def write_edit(self, extra: str) -> None:
        self.edit_recipe.write_text(f'extends = "{REPO / "recipes" / "debian12.toml"}"\n{extra}')


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    if shutil.which("mmdebstrap") is None:
        pytest.fail("mmdebstrap is not installed: run .ci/setup")
    lab = Lab(tmp_path_factory.mktemp("lab"))
    lab.config.write_text(f"""
state_dir = "{lab.state}"
recipes_dir = "{REPO / "recipes"}"
base_dir = "{REPO / "base"}"
overlays_dir = "{lab.root / "overlays"}"
export_root = "{lab.root / "export"}"
tftp_root = "{lab.root / "tftp"}"

[labels.debian12]
recipe = "debian12.toml"

[labels.edit]
recipe = "{lab.edit_recipe}"
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


def version_dir(lab: Lab, label: str, version: str) -> Path:
    return lab.state / "images" / label / version


@pytest.fixture(scope="module")
def cold(lab: Lab) -> dict[str, object]:
    """The cold build of the shipped debian12 recipe, activated."""
    started = time.monotonic()
    done = lab.netroot("--json", "build", "debian12", "--activate")
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, object] = json.loads(done.stdout)["version"]
    print(
        f"\ncold build: {seconds:.0f} s, {result['size_bytes']} bytes, "
        f"{result['file_count']} entries"
    )
    return result


def test_cold_build_boots_over_nfs(lab: Lab, cold: dict[str, object]) -> None:
    version = str(cold["version"])
    vdir = version_dir(lab, "debian12", version)
    kver = str(cold["kernel_version"])
    assert (vdir / "boot" / "vmlinuz").stat().st_size > 1_000_000
    assert (vdir / "boot" / "initrd.img").stat().st_size > 1_000_000
    assert (vdir / "rootfs" / "etc" / "netroot" / "version").read_text().strip() == version
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["version"] == version and manifest["builder"] == "mmdebstrap"

    # the initramfs, listed by the image's own lsinitrd through the chroot helper
    rootfs = vdir / "rootfs"
    initrd = f"/boot/initrd.img-{kver}"
    modules = chroot.run(rootfs, ["lsinitrd", "-m", initrd]).stdout
    for module in ("nfs", "network", "network-legacy", "rootovl"):
        assert re.search(rf"^{re.escape(module)}$", modules, re.M), (module, modules)
    files = chroot.run(rootfs, ["lsinitrd", initrd]).stdout
    assert "rootovl-mount.sh" in files
    assert "overlay.ko" in files
    assert host_mounts_under(lab.state) == []

    # base/ went in before packages configured; the recipe's customisation ran
    assert (rootfs / "etc/dracut.conf.d/90-netroot.conf").is_file()
    assert (rootfs / "usr/lib/systemd/system/netroot-boot-iface.service").is_file()
    shadow = (rootfs / "etc" / "shadow").read_text()
    assert shadow.startswith("root:$6$netrootTestSalt$")
    assert os.readlink(rootfs / "etc" / "localtime") == "/usr/share/zoneinfo/Etc/UTC"
    assert not (rootfs / "etc" / "hostname").exists()  # the build host's name stays out
    assert lab.active("debian12") == version
    log = lab.last_log("debian12")
    assert "Unpacking linux-image-amd64" in log  # the cold build did install


def test_post_only_change_reuses_the_package_stage(lab: Lab, cold: dict[str, object]) -> None:
    lab.write_edit('post = "echo post-only-change > /etc/netroot-marker"\n')
    started = time.monotonic()
    done = lab.netroot("build", "edit", "--activate", timeout=600)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-4000:]
    print(f"\nrebuild after a post-script-only change: {seconds:.0f} s")
    log = lab.last_log("edit")
    assert "reusing package stage" in log
    assert "mmdebstrap" not in log.split("reusing package stage")[0]
    for sign in ("Get:", "Unpacking ", "Setting up ", ".deb"):
        assert sign not in log, sign  # nothing downloaded, unpacked or installed
    version = lab.active("edit")
    assert version is not None
    rootfs = version_dir(lab, "edit", version) / "rootfs"
    assert (rootfs / "etc" / "netroot-marker").read_text() == "post-only-change\n"
    assert (rootfs / "etc" / "netroot" / "version").read_text().strip() == version
    # the cached tree was copied, not shared: the post script changed nothing in it
    cold_rootfs = version_dir(lab, "debian12", str(cold["version"])) / "rootfs"
    assert not (cold_rootfs / "etc" / "netroot-marker").exists()


@pytest.mark.parametrize(
    ("recipe", "field", "words"),
    [
        ('packages = ["netroot-no-such-package"]\n', "packages", "netroot-no-such-package"),
        ('post = "echo failing on purpose; exit 7"\n', "post", "status 7"),
        ('root_password = "netroot"\n', "root_password", "plaintext"),
    ],
)
def test_bad_recipe_fails_cleanly(
    lab: Lab, cold: dict[str, object], recipe: str, field: str, words: str
) -> None:
    active = lab.active("edit") or lab.active("debian12")
    before = {v["version"] for v in lab.versions("edit")}
    lab.write_edit(recipe)
    done = lab.netroot("build", "edit", "--activate", timeout=600)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("netroot: error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    first = errors[0]
    assert str(lab.edit_recipe) in first or "debian12.toml" in first, first
    assert f": {field}: " in first and words in first, first
    assert {v["version"] for v in lab.versions("edit")} == before
    assert (lab.active("edit") or lab.active("debian12")) == active
    assert host_mounts_under(lab.state) == []
    staging = lab.state / "images" / "edit" / ".staging"
    assert not staging.exists() or not [p for p in staging.iterdir() if p.name != ".lock"]
