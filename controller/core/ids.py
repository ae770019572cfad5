"""The names netroot gives things: labels and MACs. The only place their rules live."""

from __future__ import annotations

import re

from controller.core.errors import ConfigError

LABEL_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
LABEL_ALLOWED = "1-63 of a-z 0-9 . _ -, starting with a letter or digit"
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
MAC_ALLOWED = "six lowercase hex pairs joined by colons, like aa:bb:cc:dd:ee:ff"


def check_label(name: str, source: str = "label", field: str = "label") -> str:
    """Return name if it is a valid label name, else raise a ConfigError naming it."""
    if not LABEL_RE.fullmatch(name):
        raise ConfigError(source, field, f"invalid label name {name!r}", LABEL_ALLOWED)
    return name
