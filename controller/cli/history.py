"""`netroot events --since`: the event journal, read from the state database.

Read-only (WAL lets it read while the daemon writes), so it answers with the
daemon stopped too.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from controller.cli.output import printable, table
from controller.config.models import Config
from controller.core.errors import NetrootError
from controller.core.ids import is_label
from controller.core.since import parse_since
from controller.daemon.db import Database, db_path
from controller.daemon.journal import JournalEvent, JournalQuery, type_prefix
from controller.events.payloads import TYPE_PREFIX

HEADERS = ["TIME (UTC)", "TYPE", "SUBJECT", "LABEL", "SUMMARY"]
_LEFT_OUT = ("label", "mac", "log_tail")  # in other columns, or too long for a line


def journal_query(
    since: str, event_type: str | None, label: str | None, *, now: datetime | None = None
) -> JournalQuery:
    """The query the options name; a one-line error naming the option that is wrong."""
    try:
        when = parse_since(since, now=now or datetime.now(UTC))
    except ValueError as exc:
        raise NetrootError(f"--since: {exc}") from None
    prefix = None
    if event_type is not None:
        try:
            prefix = type_prefix(event_type)
        except ValueError as exc:
            raise NetrootError(f"--type: {exc}") from None
    if label is not None and not is_label(label):
        raise NetrootError(f"--label: {label!r} is not a label")
    return JournalQuery(since=when, type_prefix=prefix, label=label)


def read(config: Config, query: JournalQuery) -> list[JournalEvent]:
    """The journalled events the query selects (none if the daemon never ran)."""
    path = db_path(config)
    if not path.exists():
        return []
    with Database(path, readonly=True) as db:
        return db.journal_events(query)


def summary(event: JournalEvent) -> str:
    """The event's data fields on one line (the log tail of a failed build left out)."""
    try:
        data = json.loads(event.envelope).get("data") or {}
    except ValueError:
        return ""
    fields = {k: v for k, v in data.items() if k not in _LEFT_OUT}
    return " ".join(f"{k}={v}" for k, v in fields.items() if v not in (None, "", [], {}))


def rows(events: list[JournalEvent]) -> list[list[str]]:
    """Table rows; strings from the network (hostnames, errors) are shown escaped."""
    return [
        [
            e.time.strftime("%Y-%m-%d %H:%M:%S"),
            e.type.removeprefix(TYPE_PREFIX),
            printable(e.subject or "-"),
            e.label or "-",
            printable(summary(e)),
        ]
        for e in events
    ]


def show(config: Config, query: JournalQuery, *, as_json: bool) -> int:
    """Print the events: a table, or with --json each envelope as published, one per line."""
    events = read(config, query)
    if as_json:
        for event in events:
            print(json.dumps(json.loads(event.envelope), separators=(",", ":")))
        return 0
    if not events:
        print(f"no events since {query.since.strftime('%Y-%m-%d %H:%M:%S')} UTC")
        return 0
    table(HEADERS, rows(events))
    return 0
