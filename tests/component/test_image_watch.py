"""The daemon hears of a change of the store by hand from the store itself (inotify), not
by polling: the image watch runs here with its slow resync switched off, so nothing but
a store event can make the database follow a `netroot activate` in another process."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support import Workspace, make_root_tree

from controller.config.load import load_config
from controller.config.models import Config
from controller.daemon.context import Context
from controller.daemon.db import Database, db_path
from controller.daemon.emit import Emitter
from controller.daemon.images import ImageBook
from controller.daemon.imagewatch import ImageWatch
from controller.daemon.nodebook import NodeBook
from controller.events.topics import Topics
from controller.serve import publish
from controller.store import liveedits
from controller.store.layout import label_paths
from controller.store.locking import label_lock

WAIT_S = 60.0


@dataclass
class Served:
    ws: Workspace
    config: Config
    db: Database
    watch: ImageWatch
    versions: list[str]

    def active(self) -> str | None:
        row = self.db.labels().get(self.ws.label)
        return row.active if row else None


async def until(probe: Callable[[], bool], what: str) -> None:
    """Poll probe against a deadline (the watch runs on this loop meanwhile)."""
    deadline = time.monotonic() + WAIT_S
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    ws = Workspace(tmp_path, keep_versions=5)
    make_root_tree(ws.tree)
    ws.write()
    ws.run("build", ws.label, "--activate")
    (ws.overlays / ws.label).mkdir(parents=True)
    (ws.overlays / ws.label / "marker").write_text("2")
    ws.run("build", ws.label)
    (ws.overlays / ws.label / "marker").write_text("3")
    ws.run("build", ws.label)
    config = load_config(ws.config)
    db = Database(db_path(config), outbox_limit=config.mqtt.outbox_limit)
    emitter = Emitter(Topics(config.mqtt.topic_prefix))
    nodes = NodeBook(db, emitter, config)
    images = ImageBook(db, emitter, nodes)
    images.reconcile(config, ws.label)  # what the daemon does at start
    ctx = Context(config, ws.config, db, emitter, nodes, images)
    async with ImageWatch(ctx, resync=math.inf) as watch:
        task = asyncio.create_task(watch.run())
        try:
            yield Served(ws, config, db, watch, ws.versions())
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    db.close()


async def test_an_activation_by_the_cli_reaches_the_database_without_a_poll(
    served: Served,
) -> None:
    v1, v2 = served.versions[:2]
    assert served.active() == v1
    await asyncio.to_thread(served.ws.run, "activate", served.ws.label, v2)
    await until(lambda: served.active() == v2, "the activation by the CLI")
    await asyncio.to_thread(served.ws.run, "rollback", served.ws.label)
    await until(lambda: served.active() == v1, "the rollback by the CLI")


async def test_a_label_still_locked_is_compared_once_its_lock_is_free(served: Served) -> None:
    """The command that wrote the history line still holds the lock (releasing it makes
    no inotify event): the watch looks again until it is free."""
    v3 = served.versions[2]
    paths = label_paths(served.config, served.ws.label)
    with label_lock(paths):
        await asyncio.to_thread(publish.activate, served.config, paths, v3)
        await until(lambda: served.ws.label in served.watch.busy, "the watch to find it busy")
        assert served.active() != v3
    await until(lambda: served.active() == v3, "the comparison after the lock is free")
    assert served.watch.busy == frozenset()


async def test_a_live_edit_of_the_newly_active_version_is_heard(served: Served) -> None:
    """The watch follows the active version to see its live-edit record."""
    v2 = served.versions[1]
    await asyncio.to_thread(served.ws.run, "activate", served.ws.label, v2)
    await until(lambda: served.active() == v2, "the activation")
    paths = label_paths(served.config, served.ws.label)
    edit = liveedits.LiveEdit(time=datetime.now(UTC), changed=1, paths=("etc/motd",))
    liveedits.record(paths, v2, edit)
    await until(
        lambda: served.db.live_edits(served.ws.label).get(v2) == 1, "the live edit to be seen"
    )
