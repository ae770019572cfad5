"""The pure decisions of `netroot boot`: which accelerator, when to fall back, when to give up."""

from __future__ import annotations

import pytest

from controller.vm.milestones import (
    KVM_FIRST_MILESTONE_SECONDS,
    STALL_SECONDS,
    Watcher,
    console_tail,
    progress_verdict,
)
from controller.vm.qemu import KvmProbe, decide_accel, probe_saw_guest

RUNS = KvmProbe(boot_id="b1", runs=True, detail="banner in 0.4 s")
HANGS = KvmProbe(boot_id="b1", runs=False, detail="printed nothing within 10 s")


def test_auto_takes_kvm_only_after_a_guest_was_seen_running() -> None:
    assert decide_accel("auto", RUNS) == "kvm"
    assert decide_accel("auto", HANGS) == "tcg"
    assert decide_accel("auto", None) == "tcg"  # no /dev/kvm, or nothing to probe with
    assert decide_accel("kvm", HANGS) == "kvm"  # forced: the probe is not consulted
    assert decide_accel("tcg", RUNS) == "tcg"


def test_the_probe_needs_the_kernel_banner_not_just_qemu() -> None:
    assert probe_saw_guest("SeaBIOS\n[    0.000000] Linux version 6.1.0-27-amd64 (gcc)\n")
    assert not probe_saw_guest("")
    assert not probe_saw_guest("Probing EDD (edd=off to disable)... ok\n")


def verdict(**fields: object) -> str:
    base: dict[str, object] = {
        "accel": "kvm", "auto": True, "booted": False, "last_milestone_at": None,
        "now": 1.0, "stall_s": STALL_SECONDS["kvm"],
    }  # fmt: skip
    return progress_verdict(**{**base, **fields})  # type: ignore[arg-type]


def test_an_auto_kvm_guest_without_a_milestone_falls_back_to_tcg() -> None:
    assert verdict(now=KVM_FIRST_MILESTONE_SECONDS - 1) == "running"
    assert verdict(now=KVM_FIRST_MILESTONE_SECONDS) == "fall-back"
    assert verdict(now=2.0, exited=True) == "fall-back"  # qemu gave up at once (-cpu host)
    # one milestone proves the guest runs: from then on only the stall bound counts
    assert verdict(now=40.0, last_milestone_at=1.5) == "running"
    assert verdict(now=1.5 + STALL_SECONDS["kvm"], last_milestone_at=1.5) == "stalled"
    # forced KVM, or TCG: never a fall-back, a stall instead
    assert verdict(auto=False, now=KVM_FIRST_MILESTONE_SECONDS) == "running"
    assert verdict(auto=False, now=STALL_SECONDS["kvm"]) == "stalled"
    assert verdict(accel="tcg", now=KVM_FIRST_MILESTONE_SECONDS) == "running"


def test_the_stall_bound_is_wider_under_tcg_and_ends_with_the_boot() -> None:
    assert STALL_SECONDS["tcg"] > STALL_SECONDS["kvm"]
    tcg = {"accel": "tcg", "stall_s": STALL_SECONDS["tcg"], "last_milestone_at": 30.0}
    assert verdict(**tcg, now=30.0 + STALL_SECONDS["tcg"] - 1) == "running"
    assert verdict(**tcg, now=30.0 + STALL_SECONDS["tcg"]) == "stalled"
    assert verdict(**tcg, now=10_000.0, booted=True) == "running"  # a node up may stay quiet
    assert verdict(**{**tcg, "stall_s": None}, now=10_000.0) == "running"  # --stall 0
    assert verdict(**tcg, now=10_000.0, exited=True) == "running"  # the caller reports the exit


@pytest.mark.parametrize(
    ("line", "fatal"),
    [
        ("[    2.1] Kernel panic - not syncing: VFS: Unable to mount root fs", True),
        ("You are in emergency mode. Entering emergency mode. Exit the shell", True),
        ("No bootable device.", True),
        (
            "[  130.0] dracut-initqueue[312]: Warning: dracut-initqueue: timeout, still waiting",
            False,
        ),
        ("PXE-E32: TFTP open timeout", False),
    ],
)
def test_fatal_console_lines_end_the_boot_others_wait_for_the_bound(line: str, fatal: bool) -> None:
    watcher = Watcher()
    hits = watcher.feed_line(line, 3.0)
    assert [h.failure for h in hits] == [True]
    assert (watcher.fatal() is not None) is fatal


def test_booted_and_last_milestone_time() -> None:
    watcher = Watcher()
    assert watcher.last_at() is None and not watcher.booted
    watcher.feed_line("PXELINUX 6.04 PXE 20200816", 5.0)
    watcher.feed_line("[    0.000000] Linux version 6.1.0-27-amd64 (x)", 19.0)
    assert watcher.last_at() == 19.0 and not watcher.booted
    assert watcher.mark("report", "broker got it", 80.0) is not None
    assert watcher.booted


def test_console_tail_is_clean_and_bounded() -> None:
    text = "".join(f"\x1b[0;32mline {i}\x1b[0m\r\n\n" for i in range(30))
    assert console_tail(text, 3) == ["line 27", "line 28", "line 29"]
    assert console_tail("") == []
