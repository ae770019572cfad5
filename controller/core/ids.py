"""The names netroot uses: labels, hosts, the topic prefix, MACs, version ids. The only
place their rules live.

Each rule is one regular expression; next to it, where callers need them: what
it allows in words, checks that raise one-line errors, and Annotated types for
pydantic models.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator, Field, WithJsonSchema

from controller.core.errors import ConfigError

# --- labels -------------------------------------------------------------------

# A label names a store directory, an export, a topic level and a boot menu
# entry: no '/', which would be a path or a topic level, nor '+' or '#',
# which are MQTT wildcards.
LABEL_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
LABEL_ALLOWED = "1-63 of a-z 0-9 . _ -, starting with a letter or digit"


def is_label(name: str) -> bool:
    """True if name follows the label rule."""
    return LABEL_RE.fullmatch(name) is not None


def valid_label(name: str, what: str = "label name") -> str:
    """name if it follows the label rule, else a ValueError (for model validators)."""
    if not is_label(name):
        raise ValueError(f"invalid {what} {name!r} (allowed: {LABEL_ALLOWED})")
    return name


def check_label(name: str, source: str = "label", field: str = "label") -> str:
    """Return name if it is a valid label name, else raise a ConfigError naming it."""
    if not is_label(name):
        raise ConfigError(source, field, f"invalid label name {name!r}", LABEL_ALLOWED)
    return name


# The schema and messages of event models stay pydantic's pattern check.
Label = Annotated[str, Field(pattern=f"^{LABEL_RE.pattern}$")]
# A boot server's name (replication): it lands in a topic level, so the label rule.
ServerName = Annotated[str, Field(pattern=f"^{LABEL_RE.pattern}$")]

# --- hosts --------------------------------------------------------------------

HOST_ALLOWED = "an IPv4 or IPv6 address or a host name"
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}(\.[A-Za-z0-9][A-Za-z0-9-]{0,62})*")


IP_ALLOWED = "an IPv4 or IPv6 address"
# Dotted-quad IPv4 exactly as ipaddress writes it (no leading zeros, ASCII digits):
# text matching it is canonical already, without the parser (a few us a report).
_CANONICAL_IPV4_RE = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}"
                                r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])")  # fmt: skip


def canonical_ip(value: object) -> str:
    """The address as text in its canonical form (what str(ipaddress.ip_address()) gives).

    Kept as text, not as an address object: a node's IP is only compared and
    shown, and turning an address object back into text for every event of a
    boot storm cost more than the rest of the node's state did.
    """
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"must be {IP_ALLOWED} as a string")  # noqa: TRY004 (pydantic reports ValueError)
    if _CANONICAL_IPV4_RE.fullmatch(value):
        return value
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"invalid IP address {value[:64]!r} (allowed: {IP_ALLOWED})") from None
    # IPv4 text that parses is canonical already (the parser takes no leading zeros,
    # no spaces, no other notation); IPv6 has many spellings of one address.
    return value if address.version == 4 else str(address)


def is_host(host: str) -> bool:
    """True for an IP address or a DNS host name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return len(host) <= 253 and _HOSTNAME_RE.fullmatch(host) is not None
    return True


def valid_host(host: str) -> str:
    """host if it is an address or a host name, else a ValueError (for model validators)."""
    if not is_host(host):
        raise ValueError(f"invalid host {host!r} (allowed: {HOST_ALLOWED})")
    return host


def check_host(host: str, source: str, field: str) -> str:
    """host if it is an address or a host name, else a ConfigError naming it."""
    if not is_host(host):
        raise ConfigError(source, field, f"invalid host {host!r}", HOST_ALLOWED)
    return host


Host = Annotated[str, AfterValidator(valid_host)]

# --- MQTT topic prefix --------------------------------------------------------

# What every netroot topic starts with: no wildcards, no empty levels.
TOPIC_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
TopicPrefix = Annotated[str, Field(pattern=f"^{TOPIC_PREFIX_RE.pattern}$")]

# --- MACs ---------------------------------------------------------------------

# The canonical form, the one in topics, config keys and boot file names.
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
MAC_EXAMPLE = "aa:bb:cc:dd:ee:ff"
MAC_ALLOWED = f"a unicast MAC: six lowercase hex pairs joined by colons, like {MAC_EXAMPLE}"
# What the schema documents: upper case is accepted and normalised.
MAC_JSON_PATTERN = "^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"


def _mac_problem(mac: str) -> str | None:
    """Why a lowercase string is not a node's MAC, or None."""
    if not MAC_RE.fullmatch(mac):
        return f"not a MAC address like {MAC_EXAMPLE}"
    if int(mac[:2], 16) & 1:
        # The group bit: broadcast and multicast addresses never identify a NIC.
        return "a multicast address, not a node's MAC"
    if mac == "00:00:00:00:00:00":
        return "the null address, not a node's MAC"
    return None


# A node report checks its node's MAC half a dozen times (its topic, its payload,
# each topic it causes): the answers for the last few thousand MACs are kept.
# A refused MAC raises, and what raises is never kept.
@functools.lru_cache(maxsize=4096)
def normalize_mac(value: str) -> str:
    """Return the MAC in aa:bb:cc:dd:ee:ff form, or raise ValueError saying why not."""
    mac = value.lower()
    problem = _mac_problem(mac)
    if problem is not None:
        raise ValueError(f"{value!r} is {problem}")
    return mac


def check_mac(mac: str, source: str = "MAC address", field: str = "mac") -> str:
    """mac if it is a node's MAC in canonical (lowercase) form, else a ConfigError naming it."""
    problem = _mac_problem(mac.lower()) or (None if mac == mac.lower() else "not lowercase")
    if problem is not None:
        raise ConfigError(source, field, f"invalid MAC address {mac!r}: {problem}", MAC_ALLOWED)
    return mac


Mac = Annotated[
    str,
    AfterValidator(normalize_mac),
    WithJsonSchema({"type": "string", "pattern": MAC_JSON_PATTERN, "examples": [MAC_EXAMPLE]}),
]

# --- version ids --------------------------------------------------------------

# What the store names the versions it makes: build time (UTC, milliseconds)
# and a short content hash, so names sort by build time. The store ignores
# every other name in an images directory, and commands that pick a version
# of the store accept only these.
STORE_VERSION_RE = re.compile(r"\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{8}")

# A version id as everything outside the store sees it: an opaque name. Events,
# node reports and boot files do not depend on the store's naming, so the
# store can change it; the node agent filters /etc/netroot/version with this
# same pattern (base/usr/lib/netroot/agent). ':' and '+' never reach a path:
# paths have their own rule (render.cmdline.PATH_RE) that refuses ':'.
VERSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:-]{0,127}")
VERSION_ID_ALLOWED = "1-128 of A-Z a-z 0-9 . _ + : -, starting with a letter or digit"


def is_store_version(name: str) -> bool:
    """True for names the store gives the versions it makes."""
    return STORE_VERSION_RE.fullmatch(name) is not None


def is_version_id(name: str) -> bool:
    """True if name may be used as a version id outside the store."""
    return VERSION_ID_RE.fullmatch(name) is not None


def valid_version_id(version: str) -> str:
    """version if it follows the version id rule, else a ValueError (for model validators)."""
    if not is_version_id(version):
        raise ValueError(f"invalid version id {version!r} (allowed: {VERSION_ID_ALLOWED})")
    return version


VersionId = Annotated[str, Field(pattern=f"^{VERSION_ID_RE.pattern}$")]
