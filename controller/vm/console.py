"""The VM's serial console on this terminal (`netroot boot` without --headless).

The terminal goes raw and is joined to qemu's console socket, as the
original's qemu window was: keys go to the guest (Ctrl-C included), Ctrl-]
stops the VM. The console log is written by qemu either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty
from pathlib import Path

ESCAPE = b"\x1d"  # Ctrl-]


def interactive() -> bool:
    """True when stdin and stdout are a terminal a console can take over."""
    return sys.stdin.isatty() and sys.stdout.isatty()


async def attach(socket_path: Path, stop: asyncio.Event) -> None:
    """Join the terminal to the console socket until the VM or the user ends it."""
    for _ in range(200):  # qemu creates the socket before the guest runs
        try:
            reader, writer = await asyncio.open_unix_connection(os.fspath(socket_path))
            break
        except (FileNotFoundError, ConnectionRefusedError):
            await asyncio.sleep(0.05)
    else:
        return  # no console: the log still has it
    loop = asyncio.get_running_loop()
    fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
    saved = termios.tcgetattr(fd_in)

    def keys() -> None:
        data = os.read(fd_in, 1024)
        if not data or ESCAPE in data:
            stop.set()
            return
        writer.write(data)

    tty.setraw(fd_in)
    loop.add_reader(fd_in, keys)
    try:
        while data := await reader.read(4096):
            os.write(fd_out, data)
    finally:
        loop.remove_reader(fd_in)
        termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
