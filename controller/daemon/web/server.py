"""The daemon's HTTP server (`[http]`): a component serving daemon.web.api's routes.

Loopback by default. With `http.token_file` every request must carry
`Authorization: Bearer <token>` (compared in constant time); without one,
config loading refuses any address other than loopback. Errors are JSON
({"error": ...}); only GET (and HEAD) routes exist, so anything else is 404 or
405. The listen address and token are read at start: changing them takes a
restart (a reload refuses the change).
"""

from __future__ import annotations

import asyncio
import hmac
import os
import sqlite3
import stat
from pathlib import Path

from aiohttp import web

from controller.config.models import Config, listen_address
from controller.core.errors import ConfigError, NetrootError
from controller.core.log import get_logger
from controller.daemon.components import Component
from controller.daemon.context import Context
from controller.daemon.mqtt import BrokerLink
from controller.daemon.web.api import Endpoints, Handler, json_error

log = get_logger("http")

MAX_TOKEN_BYTES = 4096


def read_token(config: Config) -> str | None:
    """The bearer token from http.token_file (None: none configured)."""
    path = config.http.token_file
    if path is None or not config.http.enabled:
        return None
    return read_secret(path, config.source, "http.token_file")


def read_secret(path: Path, source: str, field: str) -> str:
    """A token from a file: a regular file other users cannot read or write, one line.

    ConfigError naming source and field otherwise (the token file of [http], or
    the primary's token a replica presents).
    """

    def refuse(problem: str) -> ConfigError:
        return ConfigError(source, field, f"{path}: {problem}", "a file of mode 0600")

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise refuse(f"cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise refuse("not a regular file")
        if st.st_mode & 0o007:
            raise refuse(f"mode {stat.S_IMODE(st.st_mode):04o} lets other users read or write it")
        data = os.read(fd, MAX_TOKEN_BYTES + 1)
    finally:
        os.close(fd)
    token = data.decode("utf-8", errors="replace").strip()
    if not token or len(data) > MAX_TOKEN_BYTES or any(c.isspace() for c in token):
        raise refuse(f"expected one token of 1 to {MAX_TOKEN_BYTES} bytes without spaces")
    return token


def build_app(routes: list[tuple[str, Handler]], token: str | None) -> web.Application:
    """The aiohttp application: bearer check, JSON errors, GET routes."""
    expected = f"Bearer {token}".encode() if token is not None else None

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is not None:
            given = request.headers.get("Authorization", "").encode("utf-8", errors="replace")
            if not hmac.compare_digest(given, expected):
                response = json_error(401, "missing or wrong bearer token")
                response.headers["WWW-Authenticate"] = 'Bearer realm="netroot"'
                return response
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            error = json_error(exc.status, exc.reason)
            if "Allow" in exc.headers:  # a 405 says which methods exist
                error.headers["Allow"] = exc.headers["Allow"]
            return error
        except NetrootError as exc:  # a store or database error: one line, no traceback
            return json_error(500, str(exc))
        except sqlite3.Error as exc:  # the daemon holds the database longer than busy_timeout
            return json_error(503, f"state database: {exc}")

    app = web.Application(middlewares=[guard])
    for path, handler in routes:
        app.router.add_get(path, handler)
    return app


class HttpServer(Component):
    """Serves /metrics and /api/v1 while the daemon runs (nothing with `listen = ""`)."""

    name = "http"

    def __init__(self, ctx: Context, link: BrokerLink | None, token: str | None) -> None:
        self.ctx = ctx
        self.token = token  # read_token's, checked before the daemon started anything
        self.endpoints = Endpoints(ctx, link)
        self.runner: web.AppRunner | None = None

    async def setup(self) -> None:
        """Listen; a taken port stops the start."""
        http = self.ctx.config.http
        if not http.enabled:
            log.info("http disabled (http.listen is empty)")
            return
        host, port = listen_address(http.listen)
        runner = web.AppRunner(build_app(self.endpoints.routes(), self.token), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                self.ctx.config.source, "http.listen", f"cannot listen on {http.listen}: {exc}"
            ) from None
        self.runner = runner
        log.info("http listening", listen=http.listen, token=self.token is not None)

    async def run(self) -> None:
        """aiohttp serves on its own tasks; this one lives until cancelled."""
        await asyncio.Event().wait()

    async def teardown(self) -> None:
        """Close the listener and the open connections."""
        self.endpoints.page.close()  # event streams end now: cleanup would wait for them
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        self.endpoints.close()
