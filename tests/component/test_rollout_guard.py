"""A hand activation or rollback while the label has a canary rollout requested is refused:
one line naming the label, the rollout and its version, and nothing changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from support import Workspace

from controller.config.load import load_config
from controller.daemon.db import Database, db_path
from controller.daemon.rolloutstore import (
    CanaryRequest,
    NoRollout,
    aborts,
    add_abort,
    add_request,
)


def test_activate_and_rollback_wait_for_the_labels_canary_rollout(workspace: Workspace) -> None:
    v1 = workspace.json("build", "demo", "--activate")["version"]["version"]
    (workspace.tree / "etc" / "motd").write_text("v2\n")
    v2 = workspace.json("build", "demo", "--activate")["version"]["version"]
    (workspace.tree / "etc" / "motd").write_text("v3\n")
    v3 = workspace.json("build", "demo")["version"]["version"]
    config = load_config(workspace.config)
    rollout = "canary-20261205T090000Z-0a1b2c3d"
    with Database(db_path(config)) as db:
        request = CanaryRequest(
            id=rollout, label="demo", version=v3, macs=("52:54:00:00:0c:00",),
            reason="cli", at=datetime.now(UTC),
        )  # fmt: skip
        add_request(db, request)
    for args, action in (
        (("activate", "demo", v1), "activate"),
        (("rollback", "demo"), "rollback"),
    ):
        done = workspace.run(*args, check=False)
        assert done.returncode == 1
        [line] = done.stderr.strip().splitlines()
        assert line == (
            f"netroot: error: {action} demo: canary rollout {rollout} of {v3} is requested"
            " (the daemon starts it); it ends by itself within canary_timeout (900s) and"
            f" `netroot status` follows it: {action} once it has ended, or stop it first with"
            " `netroot activate demo --abort-canary`"
        )
        assert "Traceback" not in done.stderr
        assert workspace.active() == v2
    done = workspace.run("build", "demo", "--activate", check=False)
    assert done.returncode == 1 and "build --activate demo: canary rollout" in done.stderr
    assert workspace.active() == v2
    versions = len(workspace.json("versions", "demo"))
    done = workspace.run(
        "shell", "demo", "--activate", "--command", "touch /etc/x", check=False
    )  # refused before the session opens: no version made
    assert done.returncode == 1 and "shell --activate demo: canary rollout" in done.stderr
    assert workspace.active() == v2 and len(workspace.json("versions", "demo")) == versions
    # The rollout's own promotion (the daemon's child) is not refused.
    assert workspace.json("activate", "demo", v3, "--reason", "canary")["version"] == v3


def test_an_abort_names_the_rollout_it_stops(workspace: Workspace) -> None:
    config = load_config(workspace.config)
    rollout = "canary-20261205T090000Z-0a1b2c3d"
    with Database(db_path(config)) as db:
        with pytest.raises(NoRollout, match="label demo has no canary rollout"):
            add_abort(db, "demo")
        assert aborts(db) == []
        request = CanaryRequest(
            id=rollout, label="demo", version="20261205T090000.000Z-0000aaaa",
            macs=("52:54:00:00:0c:00",), reason="cli", at=datetime.now(UTC),
        )  # fmt: skip
        add_request(db, request)
        assert add_abort(db, "demo").state == "requested"
        add_abort(db, "demo")  # asked twice is asked once
        assert aborts(db) == [("demo", rollout)]
