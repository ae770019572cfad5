"""The interactive console of `netroot boot`: a real terminal (pty) joined to a console socket."""

from __future__ import annotations

import os
import pty
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from support import REPO

ATTACH = """
import asyncio, sys
from pathlib import Path
from controller.vm import console as bootvm_console

async def main() -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(bootvm_console.attach(Path(sys.argv[1]), stop))
    await stop.wait()
    task.cancel()
    print("detached", flush=True)

asyncio.run(main())
"""


def test_keys_reach_the_guest_and_ctrl_bracket_detaches(tmp_path: Path) -> None:
    path = tmp_path / "console.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    received: list[bytes] = []

    def guest() -> None:
        conn, _ = server.accept()
        conn.sendall(b"Debian GNU/Linux 12 localhost ttyS0\r\nlocalhost login: ")
        conn.settimeout(30)
        while data := conn.recv(1024):
            received.append(data)
        conn.close()

    thread = threading.Thread(target=guest, daemon=True)
    thread.start()
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", ATTACH, str(path)],
        stdin=secondary, stdout=secondary, stderr=secondary, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    os.close(secondary)
    shown = b""
    try:
        deadline = time.monotonic() + 30
        while b"login: " not in shown and time.monotonic() < deadline:
            if select.select([primary], [], [], 0.5)[0]:
                shown += os.read(primary, 4096)
        assert b"localhost login: " in shown
        os.write(primary, b"root\r")
        deadline = time.monotonic() + 30
        while b"root\r" not in b"".join(received) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b"".join(received) == b"root\r"  # raw: no echo, no line editing
        os.write(primary, b"\x1d")  # Ctrl-]
        assert process.wait(30) == 0
        while select.select([primary], [], [], 0.5)[0]:
            try:
                shown += os.read(primary, 4096)
            except OSError:
                break
        assert b"detached" in shown
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        os.close(primary)
        server.close()
