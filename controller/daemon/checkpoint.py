"""WAL checkpoints off the event loop: a connection of their own, in a worker thread.

SQLite copies the write-ahead log back into the database file at a checkpoint.
Left to the daemon's connection (every 1,000 pages, in the commit that
crosses them) that copying ran in the event loop, a third of each commit in a
boot storm. Here a PASSIVE checkpoint runs every `CHECKPOINT_S` on its own
connection in a thread (SQLite releases the GIL while it works), so ingest
goes on meanwhile: a passive checkpoint never blocks a writer or a reader and
copies only committed frames. What a commit guarantees does not change: a
committed transaction is in the WAL, which every connection reads.

The daemon's connection still checkpoints by itself past `AUTOCHECKPOINT_PAGES`
(about 40 MB of WAL with 4 KiB pages): a bound should this component stop.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from controller.core.log import get_logger
from controller.daemon.components import Component

log = get_logger("db")

CHECKPOINT_S = 1.0
AUTOCHECKPOINT_PAGES = 10_000


class WalCheckpointer(Component):
    """Checkpoints the state database's WAL every `interval` seconds, off the event loop."""

    name = "checkpoint"

    def __init__(self, path: Path, interval: float = CHECKPOINT_S) -> None:
        self.path = path
        self.interval = interval
        self.checkpoints = 0
        self._conn: sqlite3.Connection | None = None
        self._running: asyncio.Future[None] | None = None

    async def setup(self) -> None:
        """Open the checkpoint's own connection (used by one thread at a time)."""
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout = 10000")

    async def teardown(self) -> None:
        """Close the connection once a checkpoint still running in its thread is done."""
        if self._running is not None:
            await asyncio.wait([self._running])
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def checkpoint(self) -> tuple[int, int]:
        """One passive checkpoint (blocking: the worker thread runs it).

        Returns the frames in the WAL and how many of them are in the database
        file now ((0, 0) when it could not run).
        """
        if self._conn is None:
            return 0, 0
        try:
            row = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            # The daemon's own connection checkpoints past its bound meanwhile.
            log.warning("WAL checkpoint failed", path=str(self.path), error=str(exc))
            return 0, 0
        self.checkpoints += 1
        return int(row[1]), int(row[2])

    async def run(self) -> None:
        """Checkpoint until cancelled; a cancel waits for a running checkpoint (teardown)."""
        while True:
            await asyncio.sleep(self.interval)
            self._running = asyncio.ensure_future(self._in_thread())
            await asyncio.shield(self._running)

    async def _in_thread(self) -> None:
        await asyncio.to_thread(self.checkpoint)
