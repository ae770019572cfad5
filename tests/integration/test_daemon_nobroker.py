"""Without a broker (disabled, or not running at start-up) the daemon still serves:
edits are built and activated, events wait in the outbox, the DHCP hook is applied."""

from __future__ import annotations

from pathlib import Path

import pytest
from integration.harness import Broker, Collector, Controller, free_port, wait_for
from support import Workspace, make_root_tree

pytestmark = pytest.mark.integration

MAC = "52:54:00:00:04:0a"


def served(tmp_path: Path, mqtt: str) -> Workspace:
    ws = Workspace(tmp_path, extra_config="debounce_quiet = 0.3\n" + mqtt)
    make_root_tree(ws.tree)
    ws.write()
    ws.run("build", "demo", "--activate")
    return ws


def edit(ws: Workspace, tag: str) -> None:
    # The tree changes too: a build identical to the active version makes none.
    (ws.tree / "etc" / "motd").write_text(f"{tag}\n")
    (ws.root / "recipes" / "demo.toml").write_text(
        f'builder = "import"\nsource = "../source-tree"\n# {tag}\n'
    )


def test_with_mqtt_disabled_events_stay_in_the_outbox(tmp_path: Path) -> None:
    ws = served(tmp_path, "[mqtt]\nenabled = false\n")
    controller = Controller(ws).start()
    try:
        v1 = ws.active()
        edit(ws, "no broker")
        wait_for(lambda: ws.active() != v1, "the activation")
        ws.run("hook", "dhcp", "add", MAC, "10.0.2.30", "--firmware")
        wait_for(lambda: [n for n in ws.json("nodes") if n["state"] == "dhcp"], "the lease")
        status = wait_for(
            lambda: (s := ws.json("status"))["outbox"]["pending"] >= 5 and s, "events queued"
        )
        assert status["labels"]["demo"]["active"] == ws.active()
        assert "mqtt disabled" in controller.log_text()
        controller.wait_log(f"version={ws.active()}")  # the log tells without a broker
        assert controller.stop() == 0
    finally:
        controller.cleanup()


def test_a_broker_that_is_down_at_start_up_does_not_delay_readiness(tmp_path: Path) -> None:
    port = free_port()
    # A subscriber's persistent session, made before the broker goes down: the broker
    # keeps what is published for it from the moment it is back, whenever the
    # subscriber itself reconnects (else the daemon could publish first and the test
    # would wait for an event it missed).
    broker = Broker(tmp_path / "broker", port=port).start()
    collector = Collector(port, ("netroot/events/#",))
    broker.stop()
    ws = served(tmp_path, f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n')
    controller = Controller(ws).start()  # READY=1 after the first (failed) attempt
    try:
        assert "broker unreachable" in controller.log_text()
        v1 = ws.active()
        edit(ws, "broker comes later")
        wait_for(lambda: ws.active() != v1, "the activation")
        broker.start()
        collector.wait_event("image.activated", version=ws.active())
    finally:
        collector.close()
        broker.stop()
        controller.cleanup()
