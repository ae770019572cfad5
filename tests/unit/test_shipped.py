"""Where the shipped data is and where state goes by default (controller.core.shipped)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from support import REPO

from controller.core import shipped


def test_shipped_data_is_the_package_data_the_top_level_links_name() -> None:
    assert shipped.shipped_dir() == REPO / "controller" / "shipped"
    for name in shipped.SHIPPED:
        assert shipped.shipped(name).is_dir()
        assert (REPO / name).resolve() == shipped.shipped(name)
    agent = shipped.shipped("base") / "usr" / "lib" / "netroot" / "agent"
    assert agent.stat().st_mode & stat.S_IXUSR
    with pytest.raises(ValueError, match="allowed: recipes, base, config, systemd"):
        shipped.shipped("tests")


def test_base_holds_no_symlink_a_wheel_would_drop() -> None:
    base = shipped.shipped("base")
    assert [p for p in base.rglob("*") if p.is_symlink()] == []


def test_a_checkout_keeps_state_under_its_var() -> None:
    assert shipped.checkout() == REPO
    state = shipped.default_state()
    assert (state.rule, state.state_dir, state.var) == (
        "checkout",
        REPO / "var" / "lib",
        REPO / "var",
    )
    # Never pip-installed into this interpreter's site-packages: children need PYTHONPATH.
    assert shipped.import_path() == REPO


def test_outside_a_checkout_root_uses_var_lib_netroot_and_a_user_xdg_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The uid and the checkout are the inputs of the rule; a test cannot become
    # another user or move the package, so these two are substituted.
    monkeypatch.setattr(shipped, "checkout", lambda: None)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert shipped.default_state() == shipped.DefaultState(
        Path("/var/lib/netroot"), Path("/var/lib/netroot"), "root"
    )
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert shipped.default_state().state_dir == tmp_path / "netroot"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    state = shipped.default_state()
    assert (state.rule, state.state_dir) == ("user", tmp_path / "home" / ".local/state/netroot")


def test_the_agent_reports_without_waiting_for_network_online() -> None:
    """The NIC is up from ip= before switch-root: the report must not wait on wait-online."""
    unit = shipped.shipped("base") / "usr" / "lib" / "systemd" / "system"
    text = (unit / "netroot-agent.service").read_text()
    deps = [
        line.split("=", 1)[1].split()
        for line in text.splitlines()
        if line.split("=", 1)[0] in ("After", "Wants", "Requires")
    ]
    assert "network-online.target" not in [name for names in deps for name in names]


def _unit_words(path: Path, keys: tuple[str, ...]) -> set[str]:
    """Every unit name a unit file or drop-in lists under the given keys."""
    return {
        name
        for line in path.read_text().splitlines()
        if line.split("=", 1)[0] in keys
        for name in line.split("=", 1)[1].split()
    }


def test_host_key_generation_holds_up_sshd_only_not_the_whole_boot() -> None:
    """`ssh-keygen -A` took 29.9 s of a TCG boot; ordered before sysinit.target
    it delayed every ordinary unit, the agent's report among them."""
    base = shipped.shipped("base")
    unit = base / "usr/lib/systemd/system/netroot-node-keys.service"
    before = _unit_words(unit, ("Before",))
    assert {"ssh.service", "sshd.service"} <= before
    assert "sysinit.target" not in before and "basic.target" not in before
    sysinit = base / "etc/systemd/system/sysinit.target.d/netroot.conf"
    assert "netroot-node-keys.service" not in _unit_words(sysinit, ("Wants", "Requires"))
    multi_user = base / "etc/systemd/system/multi-user.target.d/netroot.conf"
    assert "netroot-node-keys.service" in _unit_words(multi_user, ("Wants",))


def test_the_agent_starts_once_root_and_network_are_up_not_after_sysinit() -> None:
    """Root and NIC are up before switch-root; sysinit.target and basic.target
    (udev coldplug, tmpfiles, module loading) took over a minute of a TCG boot
    and the report waited for them (issue 11)."""
    unit = shipped.shipped("base") / "usr/lib/systemd/system/netroot-agent.service"
    lines = [line.strip() for line in unit.read_text().splitlines()]
    assert "DefaultDependencies=no" in lines
    after = _unit_words(unit, ("After", "Requires", "Wants", "BindsTo"))
    assert after == {"systemd-journald.socket"}
    # what DefaultDependencies=no drops and a service still needs: stop at shutdown
    assert "shutdown.target" in _unit_words(unit, ("Conflicts",))
    assert "shutdown.target" in _unit_words(unit, ("Before",))
    # ahead of udev's workers on a slow node's CPU
    nice = [int(line.split("=", 1)[1]) for line in lines if line.startswith("Nice=")]
    assert nice and nice[0] < 0


# systemd masks a unit whose file is empty (systemd.unit(5)); base/ cannot
# carry the usual /dev/null symlink. unit -> why a diskless node goes without it
MASKED = {
    # wants modprobe@loop and @dm_mod (20.1 s of a TCG boot) and grows local disks
    "systemd-repart.service": "no local disk to partition",
    # wants modprobe@efi_pstore; archives crash records into the RAM overlay
    "systemd-pstore.service": "its archive would live in RAM and vanish",
    # runs e2scrub (lvm snapshots of ext4) at every boot: 52 s of a TCG boot
    "e2scrub_reap.service": "no local ext4 on LVM",
    # Debian's: gettys on tty2-tty6 where logind is missing (35 s of a TCG boot);
    # tty1 and the serial console keep theirs
    "getty-static.service": "five more virtual-console gettys",
}


def test_units_a_diskless_node_does_not_need_are_masked_by_empty_files() -> None:
    system = shipped.shipped("base") / "etc/systemd/system"
    masked = {p.name for p in system.iterdir() if p.is_file() and p.stat().st_size == 0}
    assert masked == set(MASKED)


def test_node_keys_makes_ed25519_and_ecdsa_host_keys_not_rsa(tmp_path: Path) -> None:
    """RSA 3072 generation cost tens of seconds of a TCG boot's single vCPU."""
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    script = shipped.shipped("base") / "usr/lib/netroot/node-keys"
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("ro netroot.ssh_key=ssh-ed25519:AAAAC3Nza root=nfs4:h:/x\n")
    root = tmp_path / "root"
    handed = root / "etc/ssh/ssh_host_ecdsa_key"
    env = {**os.environ, "NETROOT_ROOT": str(root), "NETROOT_CMDLINE_FILE": str(cmdline)}

    def run() -> str:
        done = subprocess.run(
            [str(script)], env=env, capture_output=True, text=True, timeout=60, check=True
        )
        return done.stdout

    assert "ssh host keys ready" in run()
    keys = sorted(p.name for p in (root / "etc/ssh").iterdir())
    assert keys == [
        "ssh_host_ecdsa_key",
        "ssh_host_ecdsa_key.pub",
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
    ]
    assert (root / "root/.ssh/authorized_keys").read_text() == (
        "ssh-ed25519 AAAAC3Nza netroot-boot\n"
    )
    # a key handed to the node is kept; a second run adds no second authorized line
    handed.write_text("site key\n")
    run()
    assert handed.read_text() == "site key\n"
    assert len((root / "root/.ssh/authorized_keys").read_text().splitlines()) == 1


def test_the_node_journal_stays_in_run_not_in_the_overlay() -> None:
    """/var/log/journal would be RAM as well (the overlay's tmpfs): a flush at
    every boot and files in every diff report, for nothing."""
    conf = shipped.shipped("base") / "etc/systemd/journald.conf.d/netroot.conf"
    lines = [line.strip() for line in conf.read_text().splitlines()]
    assert lines[lines.index("[Journal]") + 1 :] == ["Storage=volatile"]


def test_drivers_for_hardware_a_diskless_node_lacks_are_blacklisted() -> None:
    conf = shipped.shipped("base") / "etc/modprobe.d/netroot.conf"
    words = [line.split() for line in conf.read_text().splitlines() if line.strip()]
    blacklisted = {w[1] for w in words if w[0] == "blacklist"}
    assert {"floppy", "parport_pc"} <= blacklisted
    assert all(w[0] in ("#", "blacklist") for w in words)
