"""The daemon's boot file server: kernel and initramfs over HTTP for iPXE nodes.

A listener of its own (`[boot_http] listen`), never the API's: nodes fetch
without a token, and this one serves nothing but versions' boot artifacts
(controller.serve.httpboot). Off unless configured.
"""

from __future__ import annotations

import asyncio

from controller.config.models import listen_address
from controller.core.errors import ConfigError
from controller.core.log import get_logger
from controller.daemon.components import Component
from controller.daemon.context import Context
from controller.serve.httpboot import BootHttpServer

log = get_logger("bootfiles")


class BootFiles(Component):
    """Serves /boot/LABEL/VERSION/NAME while the daemon runs (nothing with `listen = ""`)."""

    name = "boot-http"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.server: BootHttpServer | None = None

    async def setup(self) -> None:
        """Listen; a taken port stops the start."""
        boot_http = self.ctx.config.boot_http
        if not boot_http.enabled:
            return
        host, port = listen_address(boot_http.listen)
        server = BootHttpServer(lambda: self.ctx.config, host, port)
        try:
            await server.__aenter__()
        except OSError as exc:
            raise ConfigError(
                self.ctx.config.source,
                "boot_http.listen",
                f"cannot listen on {boot_http.listen}: {exc}",
            ) from None
        self.server = server

    async def run(self) -> None:
        """aiohttp serves on its own tasks; this one lives until cancelled."""
        await asyncio.Event().wait()

    async def teardown(self) -> None:
        """Close the listener and the open connections."""
        if self.server is not None:
            await self.server.__aexit__(None, None, None)
            self.server = None
