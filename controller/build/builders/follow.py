"""Follow a build log while a long command appends to it, line by line, in a thread.

The command itself runs in the calling thread (proc.run), so Ctrl-C and
cancellation still reach the code that kills its process group; the thread
only reads the file and reports progress.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

POLL_SECONDS = 0.5


class _Follower(threading.Thread):
    def __init__(self, path: Path, on_line: Callable[[str], None]) -> None:
        super().__init__(name=f"follow {path.name}", daemon=True)
        self.path = path
        self.on_line = on_line
        self.stop = threading.Event()
        self.offset = path.stat().st_size if path.exists() else 0

    def _drain(self, partial: bytes) -> bytes:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return partial
        self.offset += len(data)
        *lines, rest = (partial + data).split(b"\n")
        for raw in lines:
            # apt's progress redraws use carriage returns: keep the last state
            self.on_line(raw.decode(errors="replace").rsplit("\r", 1)[-1])
        return rest

    def run(self) -> None:
        partial = b""
        while not self.stop.wait(POLL_SECONDS):
            partial = self._drain(partial)
        partial = self._drain(partial)
        if partial:
            self.on_line(partial.decode(errors="replace"))


@contextlib.contextmanager
def following(path: Path, on_line: Callable[[str], None]) -> Iterator[None]:
    """Call on_line for every line appended to path while the block runs."""
    follower = _Follower(path, on_line)
    follower.start()
    try:
        yield
    finally:
        follower.stop.set()
        follower.join()
