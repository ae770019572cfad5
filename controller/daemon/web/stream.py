"""/api/v1/stream: the event journal as server-sent events, for the status page and any client.

Each journalled event (the envelopes MQTT subscribers get, in publication
order) is sent as `id: <seq>` and `data: <envelope>`. A client resumes where
it left off with `Last-Event-ID` (browsers send it when they reconnect) or
starts after `?after=SEQ` (the page passes the seq of its snapshot); without
either it gets the events from now on.

The journal is tailed by polling: one indexed range query by seq (the rowid)
every POLL_S per stream. Builds run as child processes that write the
database themselves, so no in-process hook would see all events; a range
scan on the rowid costs microseconds. Reads happen on one thread of the
stream's own, which keeps the only connection (SQLite connections stay on
the thread that opened them). Memory per client is one batch: a write waits
for the socket to drain before the next batch is read.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web

from controller.config.models import Config
from controller.core.log import get_logger
from controller.daemon.db import Database, db_path

log = get_logger("http")

POLL_S = 0.5  # between journal reads of an idle stream
KEEPALIVE_S = 15.0  # a comment line: proxies keep the connection, a gone client is noticed
BATCH = 500  # events read (and held) per stream at a time
MAX_STREAMS = 64  # concurrent streams; more are refused with 503
RETRY_MS = 2000  # how long a browser waits before reconnecting

_AFTER = "SELECT seq, envelope FROM journal WHERE seq > ? ORDER BY seq LIMIT ?"
_HEAD = "SELECT COALESCE(MAX(seq), 0) FROM journal"


class StartError(ValueError):
    """A Last-Event-ID or ?after= that is not a journal seq."""


def start_seq(last_event_id: str | None, after: str | None, head: int) -> int:
    """The seq a stream starts after: Last-Event-ID, else ?after=, else the journal's head.

    A seq beyond the head (a journal that was reset) starts at the head.
    """
    for name, given in (("Last-Event-ID", last_event_id), ("after", after)):
        if given is None or given == "":
            continue
        if not given.isascii() or not given.isdigit() or len(given) > 18:
            raise StartError(f"{name}: {given[:40]!r} is not an event seq (a number >= 0)")
        return min(int(given), head)
    return head


def sse_event(seq: int, envelope: bytes) -> bytes:
    """One server-sent event: `id:` the seq, `data:` the envelope (one line per line)."""
    lines = envelope.decode("utf-8", errors="replace").splitlines() or [""]
    data = "".join(f"data: {line}\n" for line in lines)
    return f"id: {seq}\n{data}\n".encode()


KEEPALIVE = b": keepalive\n\n"
PREAMBLE = f"retry: {RETRY_MS}\n\n".encode()


@dataclass
class _Reader:
    """The stream thread's connection, opened on first use."""

    db: Database | None = None


class EventStream:
    """The SSE handler and its journal reader; `close()` ends every open stream."""

    def __init__(self, config: Config, poll_s: float = POLL_S) -> None:
        self.path = db_path(config)  # state_dir takes a restart, like [http]
        self.poll_s = poll_s
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="http-stream")
        self.reader = _Reader()
        self.closing = asyncio.Event()
        self.open = 0

    def _db(self) -> Database:
        if self.reader.db is None:
            self.reader.db = Database(self.path, readonly=True)
        return self.reader.db

    def _head(self) -> int:
        return int(self._db().rows(_HEAD)[0][0])

    def _after(self, seq: int) -> list[tuple[int, bytes]]:
        return [(int(s), bytes(e)) for s, e in self._db().rows(_AFTER, (seq, BATCH))]

    def _close_reader(self) -> None:
        if self.reader.db is not None:
            self.reader.db.close()
            self.reader.db = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """GET /api/v1/stream: text/event-stream until the client or the server goes."""
        if self.closing.is_set():
            raise web.HTTPServiceUnavailable(reason="the daemon is stopping")
        if self.open >= MAX_STREAMS:
            raise web.HTTPServiceUnavailable(reason=f"{MAX_STREAMS} event streams are open")
        loop = asyncio.get_running_loop()
        head = await loop.run_in_executor(self.pool, self._head)
        try:
            cursor = start_seq(
                request.headers.get("Last-Event-ID"), request.query.get("after"), head
            )
        except StartError as exc:
            raise web.HTTPBadRequest(reason=str(exc)) from None
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # a reverse proxy must not hold events back
            }
        )
        self.open += 1
        try:
            await response.prepare(request)
            await response.write(PREAMBLE)
            await self._follow(request, response, cursor)
        except ConnectionError:
            pass  # the client went away mid-write
        finally:
            self.open -= 1
        return response

    async def _follow(
        self, request: web.Request, response: web.StreamResponse, cursor: int
    ) -> None:
        loop = asyncio.get_running_loop()
        idle = 0.0
        while not self.closing.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            batch = await loop.run_in_executor(self.pool, self._after, cursor)
            for seq, envelope in batch:
                await response.write(sse_event(seq, envelope))
                cursor = seq
            if len(batch) == BATCH:
                continue  # more waiting: no pause
            if batch:
                idle = 0.0
            elif idle >= KEEPALIVE_S:
                await response.write(KEEPALIVE)
                idle = 0.0
            if await self._closed_within(self.poll_s):
                return
            idle += self.poll_s

    async def _closed_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.closing.wait()
        return self.closing.is_set()

    def close(self) -> None:
        """End every stream (their handlers return within a poll) and let the thread go."""
        if self.closing.is_set():
            return
        self.closing.set()
        self.pool.submit(self._close_reader)
        self.pool.shutdown(wait=False)
