"""Whether a node is still there: the pure decisions of docs/design.md §11.

- Silence: a running node that said nothing for `heartbeat_timeout` while the
  controller was listening is lost. Time the controller spent cut off from the
  broker never counts against a node.
- Wills: mosquitto fires every client's will when it shuts down, and the
  controller receives them just before its own connection drops (or, from its
  persistent session, just after it reconnects). So a will is held for a
  window first; if the controller's link went down or came up within that
  window of the will, or wills came in a mass, the node is asked to `report`
  and only marked lost if it has not spoken `grace` seconds after it was asked.
- Expiry: a node that is not running, not configured, and silent for
  `node_expiry` is forgotten, so made-up MACs do not pile up forever.

Times are plain numbers from a monotonic clock the caller supplies (wall-clock
datetimes where they are compared with node states), so tests drive them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice

from controller.events.node_events import NodeState
from controller.events.nodes import RUNNING

# A will within this many seconds of our own disconnect or reconnect is suspect.
# Also how long every will waits before it counts: the disconnect that explains it
# is usually noticed just after the will arrived.
WILL_WINDOW_S = 3.0
# This many wills within one window are a broker going down, not nodes dying
# (a rack losing power is held too, and found lost after the grace).
MASS_WILLS = 10
LINK_CHANGES_KEPT = 32


def silent(
    node: NodeState, *, now: datetime, timeout: float | None, listening_since: datetime | None
) -> bool:
    """True when a running node said nothing for `timeout` seconds of listening.

    listening_since is when the controller's current broker connection came up
    (None: not connected, nothing can be judged).
    """
    if timeout is None or listening_since is None or node.state not in RUNNING:
        return False
    heard = node.last_seen or node.since
    start = listening_since if heard is None else max(heard, listening_since)
    return now - start > timedelta(seconds=timeout)


def expired(node: NodeState, *, now: datetime, expiry: float, configured: bool) -> bool:
    """True when the controller should forget the node."""
    if configured or node.state in RUNNING:
        return False  # a running node is lost by silence first; gc must see what it runs
    heard = max((t for t in (node.last_seen, node.since) if t is not None), default=None)
    return heard is not None and now - heard > timedelta(seconds=expiry)


def last_seen_due(node: NodeState, published: datetime | None, refresh: float) -> bool:
    """True when the retained state's last_seen lags the node's by `refresh` or more."""
    if node.last_seen is None:
        return False
    return published is None or node.last_seen - published >= timedelta(seconds=refresh)


def next_check(
    node: NodeState,
    *,
    published: datetime | None,
    now: datetime,
    timeout: float | None,
    expiry: float,
    refresh: float,
    configured: bool,
    listening_since: datetime | None,
) -> datetime | None:
    """The earliest time `silent`, `expired` or `last_seen_due` can hold for the node.

    None: none of them can until the node (or what was published of it) changes.
    Never later than the truth, whenever the listening starts (a later start only
    makes silence later); the caller judges again with the functions themselves
    at that time, so a scan need not look at every node every time.
    """
    if last_seen_due(node, published, refresh):
        return now
    # Called for every report in a storm: the two cases are exclusive (running or not).
    if node.state in RUNNING:
        if timeout is None:
            return None
        heard = node.last_seen or node.since
        if listening_since is None:
            start = now  # listening starts now at the earliest
        else:
            start = listening_since if heard is None or heard < listening_since else heard
        return start + timedelta(seconds=timeout)
    if configured:
        return None
    seen, since = node.last_seen, node.since
    heard = since if seen is None else seen if since is None else max(seen, since)
    return None if heard is None else heard + timedelta(seconds=expiry)


def bootable_versions(activations: Iterable[tuple[str, datetime]], until: datetime) -> set[str]:
    """Versions a node heard from by `until` could have booted: those active by then.

    Nodes boot a label's active version; one that never was active, or became
    active only after the node's last report, cannot be what it runs.
    """
    return {version for version, at in activations if at <= until}


def in_use(
    nodes: Iterable[NodeState],
    label: str,
    activations: Sequence[tuple[str, datetime]] | None = None,
) -> set[str]:
    """Versions of the label live nodes run and could have booted (gc keeps these).

    activations are (version, when it became active) from the label's history;
    None trusts every report (no history to check against).
    """
    used = set()
    for node in nodes:
        if node.label != label or node.state == "lost" or node.version is None:
            continue
        if activations is not None:
            heard = node.last_seen or node.since
            if heard is None or node.version not in bootable_versions(activations, heard):
                continue
        used.add(node.version)
    return used


@dataclass(slots=True)
class HeldWill:
    """An offline report waiting to be believed."""

    mac: str
    boot_id: str | None
    reason: str
    received: float  # monotonic
    at: datetime  # wall clock, for the state it would make
    asked: float | None = None  # when `report` was sent to the node (monotonic)


@dataclass(frozen=True, slots=True)
class Verdicts:
    """What to do with held wills now."""

    lost: list[HeldWill]  # believe these: mark the node lost
    ask: list[str]  # send these nodes `report`, then call `asked`


class WillGate:
    """Holds wills until it is clear they are not the broker's doing. Pure: no clock, no IO."""

    def __init__(
        self,
        *,
        window: float = WILL_WINDOW_S,
        mass: int = MASS_WILLS,
        grace: float = 30.0,
    ) -> None:
        self.window = window
        self.mass = mass
        self.grace = grace
        self.held: dict[str, HeldWill] = {}
        self._changes: deque[float] = deque(maxlen=LINK_CHANGES_KEPT)
        self._wills: deque[float] = deque()

    def link_changed(self, now: float) -> None:
        """Our broker connection went down or came up."""
        self._changes.append(now)

    def offline(self, will: HeldWill) -> None:
        """An offline report (a will, or an agent's clean stop): hold it."""
        self.held[will.mac] = will
        self._wills.append(will.received)

    def spoke(self, mac: str) -> None:
        """The node reported after its will: the will is moot."""
        self.held.pop(mac, None)

    def asked(self, mac: str, now: float) -> None:
        """`report` went out to the node: its grace starts."""
        will = self.held.get(mac)
        if will is not None:
            will.asked = now

    def suspect(self, will: HeldWill) -> bool:
        """True if the will came with our own link change, or with many others."""
        near = [t for t in self._changes if abs(t - will.received) <= self.window]
        if near:
            return True
        crowd = sum(1 for t in self._wills if abs(t - will.received) <= self.window)
        return crowd >= self.mass

    def due(self, now: float, *, connected: bool) -> Verdicts:
        """Wills to believe now, and nodes to ask first."""
        while self._wills and self._wills[0] < now - 4 * self.window - self.grace:
            self._wills.popleft()  # nothing held can be that old and still unjudged
        lost: list[HeldWill] = []
        ask: list[str] = []
        for mac, will in list(self.held.items()):
            if now - will.received < self.window:
                continue  # a link change explaining it may still come
            if not self.suspect(will):
                lost.append(will)
            elif will.asked is None:
                if connected:
                    ask.append(mac)
            elif now - will.asked >= self.grace:
                lost.append(will)
        for will in lost:
            del self.held[will.mac]
        return Verdicts(lost, ask)


class Resync:
    """Nodes to send `report` after a reconnect, at most `rate` per second. Pure."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.queue: dict[str, None] = {}  # insertion-ordered, no duplicates
        self._budget = 0.0
        self._last: float | None = None

    def add(self, macs: Iterable[str], *, first: bool = False) -> None:
        """Queue nodes (first: ahead of those already waiting)."""
        if first:
            self.queue = {**dict.fromkeys(macs), **self.queue}
        else:
            self.queue.update(dict.fromkeys(macs))

    def take(self, now: float) -> list[str]:
        """The nodes to ask now: a token bucket holding at most one second's worth."""
        burst = max(self.rate, 1.0)
        if self._last is not None:
            self._budget = min(burst, self._budget + (now - self._last) * self.rate)
        else:
            self._budget = burst
        self._last = now
        taken = list(islice(self.queue, min(int(self._budget), len(self.queue))))
        self._budget -= len(taken)
        for mac in taken:
            del self.queue[mac]
        return taken
