"""The promises of docs/design.md §9, checked by a client that uses no netroot code
(outside_client.py: paho-mqtt, the CloudEvents SDK, jsonschema) against a real
mosquitto and real `netroot serve` and CLI processes."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from integration.harness import Broker, Controller, agent_report, wait_for
from integration.outside_client import OutsideSubscriber
from support import Workspace, make_root_tree

pytestmark = pytest.mark.integration

QUICK = "debounce_quiet = 0.5\ndebounce_max_latency = 10\n"
MACS = ("52:54:00:00:02:0a", "52:54:00:00:02:0b", "52:54:00:00:02:0c")


@dataclass
class Scene:
    ws: Workspace
    broker: Broker
    controller: Controller
    outside: OutsideSubscriber

    def real(self) -> dict[str, Any]:
        """The state as netroot itself reports it."""
        status = self.ws.json("status")
        return {
            "controller": "online" if self.controller.alive() else "offline",
            "images": {label: info["active"] for label, info in status["labels"].items()},
            "nodes": {n["mac"]: n["state"] for n in self.ws.json("nodes")},
        }

    def quiet(self, what: str) -> None:
        """Wait for a quiet point: nothing pending, the outsider agrees with netroot."""

        def agreed() -> bool:
            if self.controller.alive() and self.ws.json("status")["outbox"]["pending"]:
                return False
            derived = self.outside.derived()
            return {k: derived[k] for k in ("controller", "images", "nodes")} == self.real()

        try:
            wait_for(agreed, f"the outside view to match netroot ({what})")
        except AssertionError:
            raise AssertionError(
                f"{what}: outside {self.outside.derived()} != real {self.real()}"
            ) from None
        assert self.outside.problems == [], self.outside.problems

    def edit(self, tag: str) -> None:
        """A new file in the imported tree, and a recipe edit the watcher sees."""
        (self.ws.tree / "etc" / "motd").write_text(f"{tag}\n")
        recipe = self.ws.root / "recipes" / "demo.toml"
        recipe.write_text(f'builder = "import"\nsource = "../source-tree"\n# {tag}\n')


def schemas(ws: Workspace) -> dict[str, dict[str, Any]]:
    """What `netroot schema` prints: the contract the outsider validates against."""
    value: dict[str, dict[str, Any]] = ws.json("schema")
    return value


@pytest.fixture
def scene(tmp_path: Path, broker: Broker) -> Iterator[Scene]:
    # A one-second heartbeat (in [mqtt]): the status refresh is seen within the test.
    # keepalive 5: a SIGSTOPped controller is given up by the broker within 7.5 s.
    mqtt = broker.mqtt_config() + "status_interval = 1\nkeepalive = 5\n"
    ws = Workspace(tmp_path, keep_versions=1, extra_config=QUICK + mqtt)
    make_root_tree(ws.tree)
    ws.write()
    outside = OutsideSubscriber(broker.port, schemas(ws))
    controller = Controller(ws)
    yield Scene(ws, broker, controller, outside)
    controller.cleanup()
    outside.close()


def image_events(outside: OutsideSubscriber, after: int = 0) -> list[dict[str, Any]]:
    return [
        e
        for e in outside.events()
        if e["type"].startswith("org.netroot.image.") and e["type"] != "org.netroot.image.state"
    ][after:]


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"].removeprefix("org.netroot.image.") for e in events]


def statuses(outside: OutsideSubscriber, status: str | None = None) -> list[dict[str, Any]]:
    found = outside.events("controller.status")
    return [s for s in found if status is None or s["data"]["status"] == status]


def first_start(scene: Scene) -> None:
    ws, outside = scene.ws, scene.outside
    ws.run("build", "demo", "--activate")  # before any daemon: the events wait for it
    scene.controller.start()
    for mac in MACS:
        agent_report(scene.broker, mac, version=ws.active())
    wait_for(lambda: len(outside.events("node.current")) == len(MACS), "the nodes to be current")
    scene.quiet("first start")
    first = image_events(outside)
    assert kinds(first) == ["build.started", "build.succeeded", "activated"]
    assert first[2]["data"]["reason"] == "cli"
    # The heartbeat: new events with fresh ids and the outbox depth, while nothing happens.
    count = len(statuses(outside))
    beats = wait_for(lambda: statuses(outside)[count + 1 :], "two heartbeats")
    assert {s["data"]["status"] for s in beats} == {"online"}
    assert all(s["data"]["outbox_pending"] >= 0 for s in beats)
    assert all(s["data"]["heartbeat_s"] == 1 for s in beats)


def automatic_build(scene: Scene) -> None:
    ws, outside = scene.ws, scene.outside
    scene.edit("auto")
    wait_for(lambda: outside.events("image.activated")[1:], "the automatic activation")
    auto = outside.events("image.activated")[-1]["data"]
    assert auto["reason"] == "auto"
    started = outside.events("image.build.started")[-1]["data"]
    assert auto["build_id"] == started["build_id"]
    log = ws.state / "logs" / "demo" / f"{started['build_id']}.log"
    assert log.is_file(), "the build id names the build's log file"
    scene.quiet("after an automatic build")


def cli_build_while_serving(scene: Scene) -> None:
    """A CLI build beside the running daemon is announced live, built by whoever."""
    ws, outside = scene.ws, scene.outside
    seen = len(image_events(outside))
    # --force: a new version of the same inputs (an edit of the imported tree would
    # make the daemon build it too: the watcher follows every file a recipe reads)
    ws.run("build", "demo", "--force")
    wait_for(lambda: len(image_events(outside, seen)) >= 2, "the CLI build's events")
    built = image_events(outside, seen)
    assert kinds(built) == ["build.started", "build.succeeded"]
    assert built[1]["data"]["version"] == ws.versions()[-1] != ws.active()
    scene.quiet("a CLI build beside the daemon")


def killed(scene: Scene) -> None:
    scene.controller.kill()
    wills = wait_for(
        lambda: [s for s in statuses(scene.outside) if s["data"].get("will")], "the will"
    )
    # The broker published it: it claims no moment the controller could not know.
    assert wills[-1]["data"]["status"] == "offline"
    assert wills[-1]["data"].get("since") is None
    scene.quiet("controller killed")


def changes_by_hand(scene: Scene) -> None:
    ws, outside = scene.ws, scene.outside
    seen = len(image_events(outside))
    before = datetime.now(UTC)
    (ws.tree / "etc" / "motd").write_text("by hand\n")
    ws.run("build", "demo", "--activate")
    after = datetime.now(UTC)
    ws.run("rollback", "demo")
    ws.run("gc", "demo")
    assert image_events(outside, seen) == []  # nobody publishes them yet

    scene.controller.start()
    wait_for(lambda: len(image_events(outside, seen)) >= 5, "the CLI's events")
    scene.quiet("restarted after CLI changes")
    by_hand = image_events(outside, seen)
    assert kinds(by_hand) == ["build.started", "build.succeeded", "activated", "rolled_back",
                              "pruned"]  # fmt: skip
    activated = by_hand[2]
    assert activated["data"]["reason"] == "cli"
    assert activated["data"]["build_id"] == by_hand[0]["data"]["build_id"]
    assert before <= datetime.fromisoformat(activated["time"]) <= after, "the action's own time"
    assert by_hand[4]["data"]["versions"]


def stopped_past_the_keepalive(scene: Scene) -> None:
    """A frozen controller: the broker fires its will; thawed, it is online with a new id."""
    wills = len([s for s in statuses(scene.outside) if s["data"].get("will")])
    online = len(statuses(scene.outside, "online"))
    scene.controller.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: len([s for s in statuses(scene.outside) if s["data"].get("will")])
                 > wills, "the will of a frozen controller")  # fmt: skip
        assert scene.outside.derived()["controller"] == "offline"
    finally:
        scene.controller.signal(signal.SIGCONT)
    wait_for(lambda: len(statuses(scene.outside, "online")) > online, "online after the thaw")
    scene.quiet("after SIGSTOP past the keepalive")


def broker_restart(scene: Scene) -> None:
    online = len(statuses(scene.outside, "online"))
    scene.broker.stop()
    scene.broker.start()
    wait_for(lambda: len(statuses(scene.outside, "online")) > online + 1, "online again")
    scene.quiet("after a broker restart")


def test_an_outsider_follows_crashes_restarts_and_cli_changes(scene: Scene) -> None:
    first_start(scene)
    stopped_past_the_keepalive(scene)
    automatic_build(scene)
    cli_build_while_serving(scene)
    killed(scene)
    changes_by_hand(scene)
    broker_restart(scene)
    # none was marked lost by the restart (they run an older version: stale)
    assert set(scene.real()["nodes"].values()) == {"stale"}
    assert scene.controller.stop() == 0
    wait_for(lambda: statuses(scene.outside)[-1]["data"]["status"] == "offline", "the goodbye")
    scene.quiet("stopped")
    ids = [e["id"] for e in scene.outside.events()]
    assert len(ids) == len(set(ids))
    assert scene.outside.problems == []
