"""Where the shipped data is and where state goes by default (controller.core.shipped)."""

from __future__ import annotations

import os
import stat
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
