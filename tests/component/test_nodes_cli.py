"""`netroot nodes` as an administrator reads it each morning, daemon stopped.

The database is filled by the daemon's own code (the node book, the DHCP spool)
over a store with two real built versions; the command runs as a user runs it.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from support import Workspace

from controller.config.load import load_config
from controller.daemon.announce import summary
from controller.daemon.db import Database, db_path
from controller.daemon.emit import Emitter
from controller.daemon.mqtt import Message
from controller.daemon.nodebook import NodeBook
from controller.daemon.spool import SpoolListener
from controller.events.node_inputs import Offline
from controller.events.topics import Topics
from controller.store.layout import label_paths
from controller.store.versions import read_manifest

LOST = "52:54:00:00:00:01"
STALE = "52:54:00:00:00:02"
UP = "52:54:00:00:00:03"
LEASED = "52:54:00:00:00:04"
BOOTS = {
    LOST: "0f8fad5b-d9cb-469f-a165-70867728950e",
    STALE: "7c9e6679-7425-40de-944b-e07fc1f90ae7",
    UP: "9c3b6f3e-2d0a-4d7e-8a51-1f0e6c2b7a10",
}
REBOOTED = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
JSON_FIELDS = {
    "mac", "hostname", "label", "version", "active_version", "state", "action", "reason",
    "ip", "kernel", "boot_id", "booted_at", "root", "boot_timing", "since", "last_seen",
    "boot_duration_s",
}  # fmt: skip


def boot_report(mac: str, version: str, boot_id: str | None = None) -> Message:
    body = {"kind": "boot", "mac": mac, "label": "demo", "version": version,
            "boot_id": boot_id or BOOTS[mac], "kernel": "6.1.0-18-amd64"}  # fmt: skip
    return Message(f"netroot/node/{mac}/report", json.dumps(body).encode())


def fleet(ws: Workspace) -> tuple[str, str]:
    """Two versions built; nodes booted on the first; the second activated; one node lost,
    one booted again on the second, one only leased. Returns (v1, v2)."""
    v1 = ws.json("build", "demo", "--activate")["version"]["version"]
    (ws.overlays / "demo").mkdir(parents=True)
    (ws.overlays / "demo" / "motd").write_text("v2\n")
    v2 = ws.json("build", "demo")["version"]["version"]
    config = load_config(ws.config)
    paths = label_paths(config, "demo")
    ws.state.mkdir(parents=True, exist_ok=True)
    with Database(db_path(config)) as db:
        book = NodeBook(db, Emitter(Topics(), source="netroot://test"), config)
        with db.transaction() as tx:  # what the daemon's store watcher records
            for version in (v1, v2):
                tx.record_version("demo", summary(read_manifest(paths, version)))
            book.activation(tx, "demo", v1, datetime.now(UTC))
        # The DHCP hook, as dnsmasq runs it; the daemon drains its spool.
        for mac, ip, name in ((STALE, "10.0.0.2", "n02"), (LEASED, "10.0.0.4", "n04")):
            ws.run("hook", "dhcp", "add", mac, ip, name)
        assert SpoolListener(config, db, book).drain() == 2
        assert book.ingest([boot_report(m, v1) for m in (LOST, STALE, UP)]) == 3
        with db.transaction() as tx:
            book.apply(tx, LOST, Offline(at=datetime.now(UTC), boot_id=BOOTS[LOST]))
        ws.run("activate", "demo", v2)
        with db.transaction() as tx:  # the daemon sees the activation
            book.activation(tx, "demo", v2, datetime.now(UTC))
        assert book.ingest([boot_report(UP, v2, REBOOTED)]) == 1  # rebooted onto v2
    return v1, v2


def test_the_fleet_table_json_and_filters(workspace: Workspace) -> None:
    v1, v2 = fleet(workspace)
    lines = workspace.run("nodes").stdout.splitlines()
    header, *rows, total = lines
    assert header.split()[:6] == ["MAC", "HOSTNAME", "LABEL", "VERSION", "ACTIVE", "STATE"]
    # By label (the unlabelled last), problems first, then MAC.
    assert [r.split()[0] for r in rows] == [LOST, STALE, UP, LEASED]
    lost, stale, up, leased = (r.split() for r in rows)
    assert lost[1:6] == ["-", "demo", v1, v2, "lost"]
    assert stale[1:7] == ["n02", "demo", v1, v2, "stale", "reboot"]
    assert up[1:6] == ["-", "demo", v2, "=", "up"]
    assert leased[1:6] == ["n04", "-", "-", "-", "booting"]
    assert total == "4 nodes: 1 lost, 1 stale, 1 booting, 1 up"

    records = workspace.json("nodes")
    assert workspace.json("nodes") == records  # nothing in it depends on when it is read
    assert [r["mac"] for r in records] == [LOST, STALE, UP, LEASED]
    assert all(set(r) == JSON_FIELDS for r in records)
    by_mac = {r["mac"]: r for r in records}
    assert (by_mac[STALE]["version"], by_mac[STALE]["active_version"]) == (v1, v2)
    assert by_mac[STALE]["hostname"] == "n02"
    assert by_mac[STALE]["booted_at"] is not None  # uptime: now - booted_at
    cells = [re.split(r"\s{2,}", r) for r in rows]
    duration = r"\d+[smhd]\w*"
    assert re.fullmatch(f"{duration} ago", cells[1][7])  # LAST SEEN
    assert re.fullmatch(duration, cells[1][8])  # UPTIME of a running node
    assert cells[0][8:10] == ["-", "-"]  # lost: no uptime; no BOOT timings yet
    assert by_mac[LEASED]["hostname"] == "n04" and by_mac[LEASED]["label"] is None
    assert all(r["boot_duration_s"] is None for r in records)  # agents report no timings yet

    stale_only = workspace.run("nodes", "--stale").stdout.splitlines()
    assert [r.split()[0] for r in stale_only[1:-1]] == [STALE]
    assert stale_only[-1] == "1 node: 1 stale"
    both = workspace.json("nodes", "--stale", "--lost", "--label", "demo")
    assert [r["mac"] for r in both] == [LOST, STALE]
    assert [r["mac"] for r in workspace.json("nodes", "--label", "demo")] == [LOST, STALE, UP]
    assert workspace.run("nodes", "--label", "other").stdout == "no nodes match\n"


def test_no_database_yet_means_no_nodes(workspace: Workspace) -> None:
    assert workspace.run("nodes").stdout == "no nodes known yet\n"
    assert workspace.json("nodes", "--stale") == []
