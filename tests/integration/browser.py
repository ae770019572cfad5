"""Headless Chromium driven over the DevTools protocol (aiohttp's websocket client).

No WebDriver and nothing downloaded: Debian's `chromium`, started with a
throw-away profile and `--remote-debugging-port=0`; the port it picked is read
from DevToolsActivePort. Each call runs on the browser object's own event loop
under a deadline, so a synchronous test can use it like any other helper.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
from integration.harness import wait_for

CALL_S = 30.0  # a guard against a hung browser, never a timing assertion
START_S = 30.0


class Chromium:
    """One headless browser with one page; use as a context manager."""

    def __init__(self, width: int = 1280, height: int = 1000) -> None:
        binary = shutil.which("chromium")
        if binary is None:
            raise AssertionError("chromium is not installed (.ci/setup installs it)")
        self.profile = Path(tempfile.mkdtemp(prefix="nr-chromium-"))
        self.stderr = (self.profile / "stderr.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",  # as root in a container there is no sandbox to have
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--metrics-recording-only",
                "--password-store=basic",
                f"--window-size={width},{height}",
                f"--user-data-dir={self.profile}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
        )
        self.loop = asyncio.new_event_loop()
        self.ids = itertools.count(1)
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        try:
            port = self._port()
            self._run(self._connect(port))
        except BaseException:
            self.close()
            raise

    def _port(self) -> int:
        marker = self.profile / "DevToolsActivePort"

        def written() -> int | None:
            if self.proc.poll() is not None:
                log = (self.profile / "stderr.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"chromium exited ({self.proc.returncode}): {log}")
            lines = marker.read_text().splitlines() if marker.exists() else []
            return int(lines[0]) if lines and lines[0].isdigit() else None

        return wait_for(written, "chromium to write DevToolsActivePort", START_S)

    async def _connect(self, port: int) -> None:
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)

    def _run(self, coro: Any) -> Any:
        async def bounded() -> Any:
            async with asyncio.timeout(CALL_S):
                return await coro

        return self.loop.run_until_complete(bounded())

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.ws is not None
        ident = next(self.ids)
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") != ident:
                continue  # an event, or the answer to nothing we wait for
            if "error" in message:
                raise AssertionError(f"{method}: {message['error']}")
            result: dict[str, Any] = message["result"]
            return result

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result."""
        return dict(self._run(self._call(method, params)))

    def navigate(self, url: str) -> None:
        """Load a URL; returns once the document finished loading."""
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        wait_for(
            lambda: self.evaluate("document.readyState") == "complete", f"{url} to load", CALL_S
        )

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable)."""
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, *paths: Path) -> bytes:
        """A PNG of what the window shows, written to each path."""
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
        return png

    def close(self) -> None:
        """Close the connection, stop the browser, remove its profile."""

        async def disconnect() -> None:
            if self.ws is not None:
                await self.ws.close()
            if self.session is not None:
                await self.session.close()

        try:
            self.loop.run_until_complete(disconnect())
        finally:
            self.loop.close()
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            self.stderr.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
