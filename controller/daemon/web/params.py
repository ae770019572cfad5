"""The API's query and path parameters: pure parsing, one-line errors naming the parameter.

The rules themselves have their homes elsewhere (core.ids for labels and MACs,
core.since for times, the journal for event types, events.fleet for node
states); this module only says which parameter broke which rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from controller.core.ids import LABEL_ALLOWED, is_label, normalize_mac
from controller.core.since import parse_since
from controller.daemon.journal import JournalQuery, type_prefix
from controller.events.fleet import Filters, check_states

EVENTS_LIMIT = 1000  # events one answer holds unless `limit` says otherwise
EVENTS_LIMIT_MAX = 10_000
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no", "")


class BadParameter(ValueError):
    """A query or path parameter the API refuses (400); the message names it."""


@dataclass(frozen=True)
class Query:
    """A request's query parameters: each name with every value given (?state=a&state=b)."""

    values: Mapping[str, Sequence[str]]

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> Query:
        """From name, value pairs in order (a multidict's items())."""
        values: dict[str, list[str]] = {}
        for name, value in pairs:
            values.setdefault(name, []).append(value)
        return cls(values)

    def all(self, name: str) -> list[str]:
        """Every value of name, in order."""
        return list(self.values.get(name, ()))

    def one(self, name: str) -> str | None:
        """The value of name; BadParameter if it was given twice."""
        given = self.all(name)
        if len(given) > 1:
            raise BadParameter(f"{name}: given {len(given)} times, expected at most once")
        return given[0] if given else None


def _label(query: Query) -> str | None:
    label = query.one("label")
    if label is not None and not is_label(label):
        raise BadParameter(f"label: {label!r} is not a label (allowed: {LABEL_ALLOWED})")
    return label


def node_filters(query: Query) -> Filters:
    """/api/v1/nodes: label, state (repeated or comma-separated: either), stale=1 (state=stale)."""
    names = [s.strip() for value in query.all("state") for s in value.split(",") if s.strip()]
    try:
        states = check_states(names)
    except ValueError as exc:
        raise BadParameter(f"state: {exc}") from None
    stale = (query.one("stale") or "").lower()
    if stale not in _TRUE + _FALSE:
        raise BadParameter(f"stale: {stale!r} is not a flag (allowed: 1 or 0)")
    if stale in _TRUE:
        states |= {"stale"}
    return Filters(states=states, label=_label(query))


def node_mac(text: str) -> str:
    """/api/v1/nodes/{mac}: the MAC in canonical form (upper case and dashes are accepted)."""
    colons = text.replace("-", ":")
    try:
        return normalize_mac(colons)
    except ValueError as exc:
        raise BadParameter(f"mac: {str(exc).replace(repr(colons), repr(text), 1)}") from None


def events_query(query: Query, now: datetime) -> JournalQuery:
    """/api/v1/events: since (required, as `netroot events --since`), type, label, limit."""
    since = query.one("since")
    if since is None:
        raise BadParameter("since: required, like `netroot events --since` (2h, 2026-12-04T08:00)")
    try:
        when = parse_since(since, now=now)
    except ValueError as exc:
        raise BadParameter(f"since: {exc}") from None
    prefix = query.one("type")
    if prefix is not None:
        try:
            prefix = type_prefix(prefix)
        except ValueError as exc:
            raise BadParameter(f"type: {exc}") from None
    return JournalQuery(since=when, type_prefix=prefix, label=_label(query), limit=_limit(query))


def _limit(query: Query) -> int:
    text = query.one("limit")
    if text is None:
        return EVENTS_LIMIT
    if not text.isdecimal() or not 1 <= int(text) <= EVENTS_LIMIT_MAX:
        raise BadParameter(f"limit: {text!r} is not a number from 1 to {EVENTS_LIMIT_MAX}")
    return int(text)
