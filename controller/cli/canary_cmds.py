"""`netroot activate LABEL VERSION --canary N` (or `--canary-macs`): ask the daemon for a rollout.

The canaries are chosen here (controller.events.canary, the same rule the
daemon uses for activation = canary) and printed; the daemon runs the
rollout (controller.daemon.rollouts) and announces every step. `netroot
status` follows it. While it is requested or running, a hand change of the
label's active version is refused (`refuse_during_rollout`): the rollout's
promotion or revert would undo it. `--abort-canary` stops it instead
(`abort_canary`): the canaries go back to the active version.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from controller.cli.output import emit_json
from controller.config.models import Config
from controller.core.errors import NetrootError, StoreError
from controller.core.ids import normalize_mac
from controller.daemon import rolloutstore
from controller.daemon.db import Database, db_path
from controller.daemon.lock import holder_pid, lock_path
from controller.daemon.rolloutstore import (
    CanaryRequest,
    NoRollout,
    RolloutBusy,
    add_request,
    new_rollout_id,
)
from controller.events.canary import CanaryError, check_canaries, choose_canaries
from controller.serve import publish
from controller.store import activation
from controller.store import versions as store
from controller.store.layout import LabelPaths, label_paths


def request_canary(
    config: Config,
    paths: LabelPaths,
    version: str | None,
    *,
    count: int | None,
    macs: str | None,
    as_json: bool,
) -> int:
    """Check, choose the canaries, queue the request for the daemon; print the choice."""
    label = paths.label
    if count is not None and macs is not None:
        raise NetrootError("--canary and --canary-macs: give one of them")
    if version is None:
        raise NetrootError("activate --canary: name the VERSION to try")
    activation.check_version_id(paths, version)
    publish.check_canary_servable(config, label)
    previous = store.active_version(paths)
    if previous is None:
        raise StoreError(f"{label}: no active version to go back to; activate without --canary")
    if previous == version:
        raise StoreError(f"{label}: {version} is already active")
    if holder_pid(lock_path(config.state_dir)) is None:
        raise NetrootError(
            "activate --canary: the daemon runs the rollout; start `netroot serve` first"
        )
    with Database(db_path(config), outbox_limit=config.mqtt.outbox_limit) as db:
        nodes = db.nodes()
        try:
            if macs is not None:
                wanted = [normalize_mac(m) for m in macs.split(",") if m.strip()]
                chosen = check_canaries(nodes, label, wanted)
            else:
                chosen = choose_canaries(nodes, label, count or 1)
        except (CanaryError, ValueError) as exc:
            raise NetrootError(str(exc)) from None
        request = CanaryRequest(
            id=new_rollout_id(),
            label=label,
            version=version,
            macs=chosen,
            reason="cli",
            at=datetime.now(UTC),
        )
        try:
            add_request(db, request)
        except RolloutBusy as exc:
            raise NetrootError(str(exc)) from None
    timeout = config.label(label).canary_timeout
    if as_json:
        emit_json(
            {
                "rollout_id": request.id,
                "label": label,
                "version": version,
                "previous": previous,
                "canaries": list(chosen),
                "timeout_s": timeout,
            }
        )
    else:
        print(
            f"canary rollout {request.id}: {label} {version} on {', '.join(chosen)}"
            f" (active stays {previous} until every canary passes, within {timeout:g}s;"
            " `netroot status` follows it)"
        )
    return 0


ABORT_WAIT_S = 60.0  # how long `--abort-canary` waits for the daemon to carry it out
ABORT_POLL_S = 0.2
OUTCOMES = {"failed": "aborted", "passed": "passed before the abort was carried out (promoted)"}


def abort_canary(config: Config, label: str, *, as_json: bool) -> int:
    """Ask the daemon to stop the label's rollout and wait until it has: the canaries'
    menus unpinned, the canaries stale against the active version (auto_reboot reboots them)."""
    if holder_pid(lock_path(config.state_dir)) is None:
        raise NetrootError("activate --abort-canary: the daemon runs rollouts; it is not running")
    path = db_path(config)
    with Database(path, outbox_limit=config.mqtt.outbox_limit) as db:
        try:
            found = rolloutstore.add_abort(db, label)
        except NoRollout as exc:
            raise NetrootError(f"activate --abort-canary: {exc}") from None
        deadline = time.monotonic() + ABORT_WAIT_S
        while (still := rolloutstore.pending(db, label)) is not None and still.id == found.id:
            if time.monotonic() > deadline:
                raise NetrootError(
                    f"activate --abort-canary {label}: asked, but the daemon has not carried it"
                    f" out within {ABORT_WAIT_S:g}s; `netroot status` follows it"
                )
            time.sleep(ABORT_POLL_S)
        phases = [r.phase for r in rolloutstore.recent(db, label) if r.id == found.id]
    outcome = OUTCOMES[phases[0]] if phases else "withdrawn before it started"
    active = store.active_version(label_paths(config, label))
    if as_json:
        emit_json(
            {
                "rollout_id": found.id,
                "label": label,
                "version": found.version,
                "outcome": outcome,
                "active": active,
            }
        )
    else:
        print(
            f"canary rollout {found.id} of {label} {found.version}: {outcome}"
            f" (active: {active}; the canaries boot it again)"
        )
    return 0


STATES = {
    "requested": "requested (the daemon starts it)",
    "running": "running",
    "finishing": "finishing (its promotion or revert is being carried out)",
}


def refuse_during_rollout(config: Config, label: str, action: str) -> None:
    """The one rule for a hand change of the label's active version (activate, rollback,
    build/shell --activate): not while a canary rollout of the label is requested or
    running, whose promotion or revert would undo it. Call it under the label's lock."""
    path = db_path(config)
    if not path.exists():
        return  # no daemon ever ran here: no rollout either
    with Database(path, outbox_limit=config.mqtt.outbox_limit) as db:
        found = rolloutstore.pending(db, label)
    if found is not None:
        raise NetrootError(rollout_busy(config, found, action))


def rollout_busy(config: Config, found: rolloutstore.Pending, action: str) -> str:
    """Why `action` waits for the rollout, and what to do, on one line."""
    label = found.label
    timeout = config.label(label).canary_timeout
    return (
        f"{action} {label}: canary rollout {found.id} of {found.version} is"
        f" {STATES[found.state]}; it ends by itself within canary_timeout ({timeout:g}s)"
        f" and `netroot status` follows it: {action} once it has ended, or stop it first with"
        f" `netroot activate {label} --abort-canary`"
    )
