"""Human output never passes terminal control sequences from the network through."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from controller.cli.daemon_cmds import as_json_line, describe
from controller.cli.output import printable
from controller.daemon.mqtt import Message
from controller.events.envelope import envelope_json
from controller.events.node_events import NodeDhcp

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
MAC = "52:54:00:ab:cd:ef"
HOSTILE = "evil\x1b]0;owned\x07\x1b[2J\u202egnp.exe\x9b31m"


def test_control_characters_are_escaped_and_ordinary_text_kept() -> None:
    assert printable("caf\u00e9 \u4e2d tab\there") == "caf\u00e9 \u4e2d tab\there"
    shown = printable(HOSTILE)
    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown
    assert "\u202e" not in shown
    assert shown.startswith("evil\\x1b]0;owned\\x07")
    assert printable("a\nb") == "a\\nb"
    assert printable("a\nb", newlines=True) == "a\nb"


def test_events_shows_a_hostile_dhcp_hostname_escaped() -> None:
    data = NodeDhcp(mac=MAC, state="dhcp", ip="10.0.2.15", firmware=True, hostname=HOSTILE)
    message = Message(
        f"netroot/events/node/{MAC}", envelope_json(data, MAC, "netroot://h", now=NOW)
    )
    line = describe(message)
    assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F for c in line)
    assert "hostname=evil\\x1b]0;owned" in line
    as_json = as_json_line(message.payload)
    assert "\x1b" not in as_json and "\n" not in as_json
    assert json.loads(as_json)["data"]["hostname"] == HOSTILE


def test_a_message_that_is_not_an_event_is_shown_escaped() -> None:
    line = describe(Message("netroot/events/node/x", b"\x1b[2Jraw"))
    assert "\x1b" not in line
    assert "\x1b" not in as_json_line(b"\x1b[2Jraw")
