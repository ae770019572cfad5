"""Boot milestones read from a VM's serial console (pure: lines in, milestones out).

Each milestone is reported once, the first time a line shows it; failures
(a panic, dracut giving up) are reported as they appear. The patterns are
what Debian 12's firmware, loaders, kernel, dracut and systemd print on
ttyS0 (BOOTLAB.md); the final one, the agent's report, also arrives over
MQTT where a broker is configured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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
        "kernel and initrd loaded over TFTP",
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

FAILURES = (
    re.compile(r"Kernel panic - not syncing.*"),
    re.compile(r"dracut-initqueue\[\d+\]: Warning: dracut-initqueue: timeout.*"),
    re.compile(r"Entering emergency mode.*"),
    re.compile(r"PXE-E\w\w.*"),
    re.compile(r"Boot Failed.*|No bootable device.*"),
)


@dataclass(frozen=True)
class Hit:
    """A milestone (or a failure) seen at a time in seconds since the VM started."""

    name: str
    text: str
    at: float
    failure: bool = False


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
                hit = Hit("failure", match.group(0)[:200], at, failure=True)
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

    def last(self) -> str:
        """The latest milestone reached, in boot order, or 'none'."""
        reached = [name for name in ORDER if name in self.seen]
        return reached[-1] if reached else "none"
