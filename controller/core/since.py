"""The one parser of a point in time a user names: `events --since TIME` (and the API's `since=`).

Two forms: an ISO 8601 date or date and time (2026-12-04, 2026-12-04T08:00,
2026-12-04 08:00:30+01:00; without an offset it is UTC, as every netroot
table prints UTC), or an age counted back from now (90s, 10m, 2h, 1d).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

SINCE_FORMS = (
    "an ISO 8601 time like 2026-12-04T08:00 (UTC unless an offset is given), "
    "or an age like 90s, 10m, 2h, 1d"
)

_AGE_RE = re.compile(r"([0-9]{1,9})([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, *, now: datetime) -> datetime:
    """The aware UTC time text names; ValueError saying the accepted forms if it names none."""
    value = text.strip()
    age = _AGE_RE.fullmatch(value)
    if age is not None:
        return now.astimezone(UTC) - timedelta(seconds=int(age[1]) * _UNIT_S[age[2]])
    problem = ValueError(f"{text!r} is not a time (allowed: {SINCE_FORMS})")
    # The ISO forms need a date: a bare number or "08:00" would be ambiguous.
    if not re.match(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        raise problem
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise problem from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)
