"""Boot milestones read from a VM's serial console (pure: lines in, milestones out).

Each milestone is reported once, the first time a line shows it; failures
(a panic, dracut giving up) are reported as they appear. The patterns are
what Debian 12's firmware, loaders, kernel, dracut and systemd print on
ttyS0 (docs/design.md §8); the final one, the agent's report, also arrives over
MQTT where a broker is configured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from controller.vm.qemu import Accel

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]")


@dataclass(frozen=True)
class Pattern:
    """A milestone and the console line that shows it."""

    name: str
    regex: re.Pattern[str]
    text: str  # what to print; {0} is the first group, if any
    after: str | None = None  # only once this milestone was seen (GRUB also says "Welcome")


MILESTONES = (
    Pattern(
        "pxe",
        re.compile(r"(PXELINUX \d\S*|NBP file downloaded|Welcome to GRUB|iPXE \d\S*)"),
        "network boot loader running ({0})",
    ),
    Pattern(
        "boot-files",
        re.compile(r"Loading \S*initrd\S*\s*\.\.\.\s*ok"),
        "kernel and initrd loaded over TFTP",  # pxelinux; over HTTP the server tells (vm.boot)
    ),
    Pattern("kernel", re.compile(r"Linux version (\S+)"), "kernel {0} started"),
    Pattern(
        "nfs-root",
        re.compile(r"(Initrd Root File System|Mounted sysroot|nfsroot.*mounted)"),
        "root filesystem mounted over NFS",
        after="kernel",
    ),
    Pattern(
        "switch-root",
        re.compile(r"Welcome to (?!.*Initramfs)(.*?)!?\s*$"),
        "switched to the real root ({0})",
        after="kernel",
    ),
    Pattern(
        "agent",
        re.compile(r"netroot-agent: boot report published: (.*)$"),
        "agent published its report: {0}",
    ),
    Pattern("login", re.compile(r"^\S+ login: ?"), "login prompt"),
)
ORDER = tuple(p.name for p in MILESTONES)

# Fatal failures are ones the guest never comes back from: the VM is stopped
# at once. The others (a dracut timeout warning, a firmware error before the
# next boot option) may still be followed by progress; the stall bound judges.
FATAL_FAILURES = (
    re.compile(r"Kernel panic - not syncing.*"),
    re.compile(r"Entering emergency mode.*"),
    re.compile(r"No bootable device.*"),
)
FAILURES = (
    *FATAL_FAILURES,
    re.compile(r"dracut-initqueue\[\d+\]: Warning: dracut-initqueue: timeout.*"),
    re.compile(r"PXE-E\w\w.*"),
    re.compile(r"Boot Failed.*"),
)
BOOTED = ("agent", "login", "report")  # any of these: the node is up

# Seconds without a new milestone after which a VM that has not booted is
# stopped. The widest gap of a TCG boot (switch root to the agent's report)
# took 30 s idle and 50 s on a loaded 2-core machine; KVM is ten times faster.
STALL_SECONDS: dict[Accel, float] = {"tcg": 120.0, "kvm": 45.0}
# Under KVM the loader or the kernel prints within two seconds; a guest
# chosen by `--accel auto` that shows nothing by then is hung, not slow.
KVM_FIRST_MILESTONE_SECONDS = 20.0
Verdict = Literal["running", "fall-back", "stalled"]


def progress_verdict(
    *,
    accel: Accel,
    auto: bool,
    booted: bool,
    last_milestone_at: float | None,
    now: float,
    stall_s: float | None,
    exited: bool = False,
) -> Verdict:
    """What to do with a VM (times in seconds since it started; exited: qemu ended).

    "fall-back": a KVM guest chosen by auto showed no milestone in time, or
    qemu ended before one; boot again under TCG. "stalled": no new milestone
    within stall_s; stop it. "running": carry on (or, if exited, report why).
    """
    if booted:
        return "running"  # a booted node may stay quiet for hours
    kvm_silent = accel == "kvm" and auto and last_milestone_at is None
    if kvm_silent and (exited or now >= KVM_FIRST_MILESTONE_SECONDS):
        return "fall-back"
    since = now - (last_milestone_at if last_milestone_at is not None else 0.0)
    if not exited and stall_s is not None and since >= stall_s:
        return "stalled"
    return "running"


def console_tail(text: str, lines: int = 20) -> list[str]:
    """The last non-empty console lines, without colour codes: what an error shows."""
    cleaned = [clean(line) for line in text.splitlines()]
    return [line for line in cleaned if line][-lines:]


@dataclass(frozen=True)
class Hit:
    """A milestone (or a failure) seen at a time in seconds since the VM started."""

    name: str
    text: str
    at: float
    failure: bool = False
    fatal: bool = False


def clean(line: str) -> str:
    """A console line without colour codes and carriage returns."""
    return _ANSI.sub("", line).replace("\r", "").strip()


@dataclass
class Watcher:
    """Feeds console lines, returns new hits; remembers what was seen."""

    seen: dict[str, Hit] = field(default_factory=dict)
    failures: list[Hit] = field(default_factory=list)
    _partial: str = ""

    def feed_text(self, chunk: str, at: float) -> list[Hit]:
        """Feed raw console output (any split); whole lines are examined."""
        data = self._partial + chunk
        *lines, self._partial = data.split("\n")
        hits: list[Hit] = []
        for line in lines:
            hits += self.feed_line(line, at)
        return hits

    def feed_line(self, raw: str, at: float) -> list[Hit]:
        """Examine one console line."""
        line = clean(raw)
        if not line:
            return []
        hits = []
        for pattern in MILESTONES:
            if pattern.name in self.seen or (pattern.after and pattern.after not in self.seen):
                continue
            match = pattern.regex.search(line)
            if match:
                detail = match.group(1).strip() if match.groups() else ""
                hit = Hit(pattern.name, pattern.text.format(detail), at)
                self.seen[pattern.name] = hit
                hits.append(hit)
        for failure in FAILURES:
            match = failure.search(line)
            if match:
                hit = Hit("failure", match.group(0)[:200], at, failure=True,
                          fatal=failure in FATAL_FAILURES)  # fmt: skip
                self.failures.append(hit)
                hits.append(hit)
        return hits

    def mark(self, name: str, text: str, at: float) -> Hit | None:
        """Record a milestone seen elsewhere (the MQTT report); None if already seen."""
        if name in self.seen:
            return None
        hit = Hit(name, text, at)
        self.seen[name] = hit
        return hit

    @property
    def booted(self) -> bool:
        """The node came up (its agent reported, or a login prompt)."""
        return any(name in self.seen for name in BOOTED)

    def last_at(self) -> float | None:
        """When the latest milestone was seen, or None before the first."""
        return max((hit.at for hit in self.seen.values()), default=None)

    def fatal(self) -> Hit | None:
        """The first failure the guest cannot come back from, if any."""
        return next((hit for hit in self.failures if hit.fatal), None)

    def last(self) -> str:
        """The latest milestone reached, in boot order, or 'none'."""
        reached = [name for name in ORDER if name in self.seen]
        return reached[-1] if reached else "none"
