"""What /metrics and /api/v1/labels read, against a real state database (no daemon)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from controller.config.load import load_config
from controller.config.models import Config
from controller.daemon.db import Database, db_path
from controller.daemon.web.fleet import label_overview, read_fleet
from controller.events.node_events import NodeState

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _config(tmp_path: Path) -> Config:
    path = tmp_path / "netroot.toml"
    path.write_text('state_dir = "state"\n[labels.demo]\nrecipe = "demo.toml"\n')
    return load_config(path)


def _node(mac: str, state: str, age: float | None, action: str | None = None) -> NodeState:
    seen = None if age is None else datetime.fromtimestamp(NOW.timestamp() - age, UTC)
    return NodeState.model_validate(
        {"mac": mac, "state": state, "label": "demo", "action": action, "last_seen": seen}
    )


def test_counts_ages_builds_and_outbox_come_from_the_tables(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with Database(db_path(config)) as db, db.transaction() as tx:
        tx.put_node(_node("52:54:00:00:00:01", "up", 10))
        tx.put_node(_node("52:54:00:00:00:02", "stale", 100, action="reboot"))
        tx.put_node(_node("52:54:00:00:00:03", "stale", 4000, action="remount"))
        tx.put_node(_node("52:54:00:00:00:04", "dhcp", None))
        tx.begin_build("b1", "demo", "full", "cli")
        tx.finish_build("b1", "failed", step="base", error="no network")
        tx.begin_build("b2", "demo", "full", "cli")
        tx.finish_build("b2", "succeeded", version="v2")
        tx.queue_build("b3", "demo", "overlay", "edit", ())
        tx.emit("netroot/events/x", b"{}")
    fleet = read_fleet(config, now=NOW.timestamp())
    assert fleet.nodes == {("demo", "up"): 1, ("demo", "stale"): 2, ("demo", "dhcp"): 1}
    assert fleet.stale == {("demo", "reboot"): 1, ("demo", "remount"): 1}
    ages = fleet.last_seen
    assert ages.counts[-1] == 3  # the node never seen is not observed
    assert dict(zip(ages.bounds, ages.counts, strict=False))[30.0] == 1
    assert dict(zip(ages.bounds, ages.counts, strict=False))[3600.0] == 2
    assert round(ages.total) == 4110
    assert fleet.builds == {("demo", "failed"): 1, ("demo", "succeeded"): 1, ("demo", "queued"): 1}
    assert fleet.build_seconds["demo"].counts[-1] == 2
    assert fleet.outbox_depth == 1
    assert fleet.versions == {"demo": 0}
    (label,) = label_overview(config)
    assert label["active"] is None
    assert label["last_build"]["build_id"] == "b2"
    assert label["last_build"]["result"] == "succeeded"
