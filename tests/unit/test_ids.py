"""The naming rules of core.ids: one rule each, the same wherever a name is checked."""

from __future__ import annotations

import ipaddress
import itertools
from pathlib import Path

import pytest
from pydantic import ValidationError

from controller.config.load import parse_config
from controller.core.errors import ConfigError
from controller.core.ids import (
    canonical_ip,
    check_mac,
    is_store_version,
    is_version_id,
    normalize_mac,
)
from controller.events.node_events import NodeState
from controller.render.cmdline import mac_file_id

# Not a node's MAC, though six hex pairs: the group bit (multicast, broadcast) or all zeros.
NOT_A_NODE = ["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "33:33:00:00:00:01", "00:00:00:00:00:00"]


@pytest.mark.parametrize("mac", NOT_A_NODE)
def test_a_multicast_or_null_mac_is_refused_by_config_events_and_renderers_alike(
    mac: str, tmp_path: Path
) -> None:
    # The config used to take these as [nodes] keys while events refused them.
    data = {"labels": {"demo": {"recipe": "demo.toml"}}, "nodes": {mac: {"label": "demo"}}}
    with pytest.raises(ConfigError, match=f'nodes."{mac}": invalid MAC address'):
        parse_config(data, source="netroot.toml", root=tmp_path)
    with pytest.raises(ValueError, match="not a node's MAC"):
        normalize_mac(mac)
    with pytest.raises(ValidationError, match="not a node's MAC"):
        NodeState(mac=mac)
    with pytest.raises(ConfigError, match="not a node's MAC"):
        mac_file_id(mac)


def test_a_unicast_mac_is_taken_everywhere(tmp_path: Path) -> None:
    mac = "52:54:00:ab:cd:ef"
    data = {"labels": {"demo": {"recipe": "demo.toml"}}, "nodes": {mac: {"label": "demo"}}}
    assert mac in parse_config(data, source="netroot.toml", root=tmp_path).nodes
    assert check_mac(mac) == normalize_mac(mac.upper()) == NodeState(mac=mac.upper()).mac == mac


def test_config_keys_and_boot_file_names_take_only_the_lowercase_form() -> None:
    with pytest.raises(ConfigError, match="not lowercase"):
        check_mac("52:54:00:AB:CD:EF")


@pytest.mark.parametrize(
    ("name", "made_by_the_store", "a_version_id"),
    [
        ("20260301T120000.000Z-0000aaaa", True, True),
        ("20260301T120000Z-0000aaaa", False, True),  # no milliseconds: not the store's
        ("1.2+deb12u1:x", False, True),  # what a root's /etc/netroot/version may say
        ("v 1", False, False),
        ("-v1", False, False),
        ("", False, False),
    ],
)
def test_store_version_names_are_a_subset_of_version_ids(
    name: str, made_by_the_store: bool, a_version_id: bool
) -> None:
    assert is_store_version(name) is made_by_the_store
    assert is_version_id(name) is a_version_id


ADDRESSES = [
    "0.0.0.0",  # noqa: S104 (spelled, not bound)
    "10.0.2.15",
    "192.168.255.254",
    "255.255.255.255",
    "1.20.199.249",
    "172.16.5.7",
]
NOISE = ["", "0", "00", "9", " ", "\u0661", "\uff11", "+", ".1"]


@pytest.mark.parametrize("address", ADDRESSES)
def test_ip_text_is_what_the_address_parser_says_whatever_the_spelling(address: str) -> None:
    # Dotted quads skip the parser when they are canonical already; every other
    # spelling (leading zeros, non-ASCII digits, a fifth part, a number too big)
    # must get the parser's answer.
    octets = address.split(".")
    for i, noise, before in itertools.product(range(4), NOISE, (True, False)):
        spelled = [*octets]
        spelled[i] = noise + spelled[i] if before else spelled[i] + noise
        text = ".".join(spelled)
        try:
            expected: str | None = str(ipaddress.ip_address(text))
        except ValueError:
            expected = None
        try:
            got: str | None = canonical_ip(text)
        except ValueError:
            got = None
        assert got == expected, text
