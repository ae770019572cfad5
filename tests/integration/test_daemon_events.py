"""`netroot serve` against a real mosquitto: edits become builds, activations and events,
and neither a broker outage nor SIGKILL loses one."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from integration.harness import (
    Broker,
    Collector,
    Controller,
    agent_report,
    wait_for,
)
from support import REPO, Workspace, make_root_tree

pytestmark = pytest.mark.integration

QUICK = "debounce_quiet = 0.5\ndebounce_max_latency = 10\n"
MAC_A = "52:54:00:00:01:0a"
MAC_B = "52:54:00:00:01:0b"


@dataclass
class Lab:
    """A workspace served by a controller, a broker and a test subscriber."""

    ws: Workspace
    broker: Broker
    controller: Controller
    collector: Collector

    @property
    def recipe(self) -> Path:
        return self.ws.root / "recipes" / "demo.toml"

    def edit_recipe(self, tag: str) -> bytes:
        """Change the imported tree, then rewrite the recipe (another comment) so the
        watcher sees it; returns the new recipe content. (A build identical to the
        active version makes no new version.)"""
        (self.ws.tree / "etc" / "motd").write_text(f"{tag}\n")
        content = f'builder = "import"\nsource = "../source-tree"\n# {tag}\n'.encode()
        self.recipe.write_bytes(content)
        return content

    def status(self) -> Any:
        return self.ws.json("status")

    def nodes(self) -> Any:
        return self.ws.json("nodes")

    def manifest(self, version: str | None) -> Any:
        return next(v for v in self.ws.json("versions", "demo") if v["version"] == version)

    def idle(self) -> bool:
        """The last build has finished and nothing is queued."""
        last = self.status()["labels"]["demo"]["last_build"]
        return last is not None and last["state"] in ("succeeded", "failed")

    def builds(self) -> list[dict[str, Any]]:
        return self.collector.events("image.build.started")


@pytest.fixture
def lab(tmp_path: Path, broker: Broker) -> Iterator[Lab]:
    ws = Workspace(tmp_path, extra_config=QUICK + broker.mqtt_config())
    make_root_tree(ws.tree)
    ws.write()
    ws.run("build", "demo", "--activate")  # v1, before the daemon ever ran
    collector = Collector(broker.port)
    # v1's own events wait in the outbox for the first daemon (tested on their own in
    # test_outside_subscriber.py); these tests look at what the daemon does next.
    v1 = ws.active()
    collector.ignored_builds.add(
        next(v["build_id"] for v in ws.json("versions", "demo") if v["version"] == v1)
    )
    controller = Controller(ws)
    yield Lab(ws, broker, controller, collector)
    controller.cleanup()
    collector.close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_topic_types(lab: Lab) -> list[tuple[str, str | None]]:
    """(type, version) of every image event in the order the subscriber got them."""
    return [
        (e["type"].removeprefix("org.netroot.image."), e["data"].get("version"))
        for e in lab.collector.events(topic="netroot/events/image/demo")
    ]


def test_a_recipe_edit_gives_one_build_one_activation_and_the_events(lab: Lab) -> None:
    v1 = lab.ws.active()
    lab.controller.start()
    stream = subprocess.Popen(
        [*lab.ws.argv("--json", "events", "--count", "4", "--timeout", "120")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    # The CLI stream is subscribed once the retained controller status reached it.
    wait_for(lambda: stream.poll() is None and lab.status()["daemon"]["running"], "daemon")
    lab.collector.wait_event("controller.status", status="online")
    content = lab.edit_recipe("first edit")

    (activated,) = lab.collector.wait_event("image.activated")
    wait_for(lab.idle, "the daemon to be idle")
    v2 = lab.ws.active()
    assert v2 != v1
    assert activated["data"]["version"] == v2
    assert activated["data"]["previous"] == v1
    (started,) = lab.collector.events("image.build.started")
    (succeeded,) = lab.collector.events("image.build.succeeded")
    assert started["data"]["build_id"] == succeeded["data"]["build_id"]
    assert started["data"]["kind"] == "full"
    assert str(lab.recipe) in started["data"]["paths"]
    assert succeeded["data"]["version"] == v2
    assert image_topic_types(lab) == [
        ("build.started", None),
        ("build.succeeded", v2),
        ("activated", v2),
    ]
    assert lab.manifest(v2)["recipe_sha256"] == sha256(content)
    assert len(lab.ws.versions()) == 2  # exactly one build happened
    state = lab.collector.events("image.state")[-1]["data"]
    assert (state["active"]["version"], state["previous"]) == (v2, v1)

    out, err = stream.communicate(timeout=120)
    assert stream.returncode == 0, err
    types = [json.loads(line)["type"].removeprefix("org.netroot.") for line in out.splitlines()]
    assert types == [
        "controller.status",
        "image.build.started",
        "image.build.succeeded",
        "image.activated",
    ]
    assert lab.controller.stop() == 0
    offline = lab.collector.wait_event("controller.status", status="offline")
    assert offline


def test_two_hundred_rapid_edits_give_one_build_of_the_last_edit(lab: Lab) -> None:
    lab.controller.start()
    for i in range(200):
        content = lab.edit_recipe(f"edit {i}")
    wait_for(
        lambda: lab.manifest(lab.ws.active())["recipe_sha256"] == sha256(content),
        "the last edit to be active",
    )
    wait_for(lab.idle, "the daemon to be idle")
    assert len(lab.builds()) == 1
    assert len(lab.ws.versions()) == 2
    assert "changes settled" in lab.controller.log_text()


def test_edits_during_a_build_coalesce_into_one_follow_up(lab: Lab) -> None:
    lab.controller.start()
    lab.edit_recipe("starts a build")
    lab.collector.wait_event("image.build.started")
    for i in range(200):
        content = lab.edit_recipe(f"during the build {i}")
    wait_for(
        lambda: lab.manifest(lab.ws.active())["recipe_sha256"] == sha256(content),
        "the last edit to be active",
    )
    wait_for(lab.idle, "the daemon to be idle")
    assert 1 <= len(lab.builds()) <= 2
    assert len(lab.collector.events("image.activated")) == len(lab.builds())


def test_a_broker_outage_delays_events_and_loses_none(lab: Lab) -> None:
    lab.controller.start()
    lab.collector.wait_event("controller.status", status="online")
    lab.broker.stop()
    versions = []
    for i in range(3):
        before = lab.ws.active()
        lab.edit_recipe(f"outage {i}")
        wait_for(lambda b=before: lab.ws.active() != b, "an activation without a broker")  # type: ignore[misc]
        wait_for(
            lambda: lab.status()["labels"]["demo"]["active"] == lab.ws.active(),
            "the daemon to record the activation",
        )
        versions.append(lab.ws.active())
    assert lab.status()["outbox"]["pending"] >= 9
    lab.broker.start()

    lab.collector.wait_event("image.activated", count=3)
    wait_for(lambda: lab.status()["outbox"]["pending"] == 0, "the outbox to drain")
    expected = []
    for v in versions:
        expected += [("build.started", None), ("build.succeeded", v), ("activated", v)]
    assert image_topic_types(lab) == expected
    assert lab.controller.alive()


def test_sigkill_and_restart_lose_no_event_and_keep_the_state(lab: Lab) -> None:
    lab.controller.start()
    for mac in (MAC_A, MAC_B):
        agent_report(lab.broker, mac, version=lab.ws.active())
    lab.collector.wait_event("node.current", count=2)
    lab.broker.stop()
    lab.edit_recipe("while the broker is away")
    v1 = lab.ws.active()
    wait_for(lambda: lab.ws.active() != v1, "the activation")
    wait_for(
        lambda: len([n for n in lab.nodes() if n["state"] == "stale"]) == 2,
        "both nodes to be stale",
    )
    before = {"nodes": lab.nodes(), "versions": lab.ws.versions()}
    pending = lab.status()["outbox"]["pending"]
    assert pending > 0

    lab.controller.kill()
    lab.broker.start()
    lab.controller.start()

    v2 = lab.ws.active()
    lab.collector.wait_event("image.activated", version=v2)
    lab.collector.wait_event("node.stale", count=2, action="reboot", active_version=v2)
    wait_for(lambda: lab.status()["outbox"]["pending"] == 0, "the outbox to drain")
    assert lab.nodes() == before["nodes"]
    assert lab.ws.versions() == before["versions"]
    assert image_topic_types(lab) == [
        ("build.started", None),
        ("build.succeeded", v2),
        ("activated", v2),
    ]
    assert lab.controller.log_text().count("recovered") >= 2


def test_sigkill_during_a_build_fails_it_and_builds_again(lab: Lab) -> None:
    make_root_tree(lab.ws.tree, files=6000)  # a build long enough to be killed in
    lab.controller.start()
    lab.edit_recipe("killed build")
    (started,) = lab.collector.wait_event("image.build.started")
    lab.controller.kill()
    lab.controller.start()

    failed = lab.collector.wait_event("image.build.failed", build_id=started["data"]["build_id"])
    assert failed[0]["data"]["step"] == "interrupted"
    lab.collector.wait_event("image.activated")
    wait_for(lab.idle, "the daemon to be idle")
    starts = lab.builds()
    assert len(starts) == 2
    assert starts[1]["data"]["reason"] == "interrupted build"
    assert lab.collector.events("image.build.succeeded")[-1]["data"]["version"] == lab.ws.active()


def test_sigterm_cancels_the_build_and_says_offline(lab: Lab) -> None:
    make_root_tree(lab.ws.tree, files=6000)
    lab.controller.start()
    lab.edit_recipe("cancelled build")
    lab.collector.wait_event("image.build.started")
    assert lab.controller.stop() == 0
    lab.collector.wait_event("image.build.failed", step="interrupted")
    lab.collector.wait_event("controller.status", status="offline")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert f"--config {lab.ws.config} --json build demo" not in ps.stdout
    assert any(n.startswith("STOPPING=1") for n in lab.controller.received())
    assert any(n == "WATCHDOG=1" for n in lab.controller.received())


def test_a_build_that_committed_unwatched_is_adopted_never_rebuilt(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build child dies right after its commit, before it can say so, and the daemon
    is SIGKILLed meanwhile: the next daemon announces the commit, builds nothing again."""
    import signal

    # Long enough to stop the daemon during it; changed while no daemon ran, so the
    # daemon builds it at start (an edit now would queue a follow-up build).
    make_root_tree(lab.ws.tree, files=6000)
    monkeypatch.setenv("NETROOT_FAILPOINT", "build:done")  # the child's SIGKILL after commit
    v1 = lab.ws.active()
    lab.controller.start()
    (started,) = lab.collector.wait_event("image.build.started")
    lab.controller.signal(signal.SIGSTOP)  # it cannot notice the child's end
    wait_for(lambda: len(lab.ws.versions()) == 2, "the build's commit")
    lab.controller.kill()
    monkeypatch.delenv("NETROOT_FAILPOINT")
    lab.controller.start()

    build_id = started["data"]["build_id"]
    (succeeded,) = lab.collector.wait_event("image.build.succeeded", build_id=build_id)
    assert succeeded["data"]["adopted"] is True
    v2 = succeeded["data"]["version"]
    (activated,) = lab.collector.wait_event("image.activated", version=v2)
    assert (activated["data"]["reason"], activated["data"]["build_id"]) == ("auto", build_id)
    wait_for(lambda: lab.ws.active() == v2 != v1, "the adopted version to be active")
    wait_for(lab.idle, "the daemon to be idle")
    assert len(lab.builds()) == 1, "never built again"
    assert lab.collector.events("image.build.failed") == []
    assert len(lab.ws.versions()) == 2
