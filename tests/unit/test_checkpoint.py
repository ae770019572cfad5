"""WAL checkpoints off the event loop: the daemon's commits leave the copying to a thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from controller.daemon import db as dbmodule
from controller.daemon.checkpoint import WalCheckpointer
from controller.daemon.db import Database


def wal_frames(path: Path) -> int:
    """Frames in the WAL file (its 32-byte header, then 24 bytes and a page per frame)."""
    wal = Path(f"{path}-wal")
    return (wal.stat().st_size - 32) // (24 + 4096) if wal.exists() else 0


def fill(db: Database, rows: int) -> None:
    for i in range(rows):
        with db.transaction() as tx:
            tx.emit(f"t/{i}", b"x" * 3000)


def test_commits_leave_the_wal_to_the_checkpointer(tmp_path: Path) -> None:
    db = Database(tmp_path / "netroot.db")
    db.defer_checkpoints(100_000)
    fill(db, 1200)  # more pages than SQLite's own default bound of 1,000
    assert wal_frames(db.path) > 1000  # no commit checkpointed
    keeper = WalCheckpointer(db.path)
    asyncio.run(keeper.setup())
    frames, copied = keeper.checkpoint()
    assert frames > 1000
    assert copied == frames
    # The next write starts the WAL over at its beginning: the file does not grow.
    fill(db, 1)
    assert wal_frames(db.path) == frames
    assert len(Database(db.path, readonly=True).outbox_head(2000)) == 1201
    asyncio.run(keeper.teardown())
    db.close()


def test_the_component_checkpoints_on_its_own_and_stops_cleanly(tmp_path: Path) -> None:
    db = Database(tmp_path / "netroot.db")
    db.defer_checkpoints(100_000)
    fill(db, 50)

    class Counted(WalCheckpointer):
        second = threading.Event()

        def checkpoint(self) -> tuple[int, int]:
            done = super().checkpoint()
            if self.checkpoints >= 2:
                self.second.set()
            return done

    async def main() -> int:
        async with Counted(db.path, interval=0.01) as keeper:
            task = asyncio.create_task(keeper.run())
            assert await asyncio.to_thread(keeper.second.wait, 30)
            task.cancel()
            await asyncio.wait([task])
        return keeper.checkpoints

    assert asyncio.run(main()) >= 2
    db.close()


def test_a_wal_grown_in_a_storm_is_cut_back_once_checkpointed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dbmodule, "WAL_SIZE_LIMIT", 64 * 1024)
    db = Database(tmp_path / "netroot.db")
    db.defer_checkpoints(100_000)
    fill(db, 1200)
    wal = Path(f"{db.path}-wal")
    grown = wal.stat().st_size
    assert grown > 1_000_000
    keeper = WalCheckpointer(db.path)
    asyncio.run(keeper.setup())
    keeper.checkpoint()
    fill(db, 1)  # the next write resets the WAL, and truncates the file to the limit
    assert wal.stat().st_size <= 64 * 1024 + 8192, (grown, wal.stat().st_size)
    asyncio.run(keeper.teardown())
    db.close()
