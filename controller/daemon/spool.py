"""The durable queue between the DHCP hook and the daemon: one JSON file per lease.

`netroot hook dhcp` (run by dnsmasq for every lease) writes a record with
write-temp-then-rename into `<state_dir>/spool/`; the daemon's listener
applies records oldest first and deletes each only after the transaction
holding its effects committed. The hook never talks to the daemon directly,
so it works while the daemon restarts. (In-place edits by `netroot shell
--live` are found in each version's live-edits log instead, see images.py.)
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, Field, ValidationError

from controller.config.models import Config
from controller.core.ids import Mac
from controller.core.log import get_logger
from controller.core.model import Model, first_error
from controller.daemon.components import Component
from controller.daemon.db import Database, Tx
from controller.daemon.nodebook import NodeBook
from controller.events.node_inputs import DhcpLease
from controller.events.payloads import IpAddress
from controller.store import fsops

log = get_logger("spool")

POLL_S = 0.25
MAX_RECORD_BYTES = 4096
BATCH = 500


class DhcpRecord(Model):
    """A lease dnsmasq handed out (its --dhcp-script `add` or `old`)."""

    kind: Literal["dhcp"] = "dhcp"  # room for other record kinds
    action: Literal["add", "old"]
    mac: Mac
    ip: IpAddress
    hostname: str | None = Field(None, max_length=255)
    firmware: bool = Field(description="asked by PXE/UEFI firmware or iPXE: a boot starts")
    at: AwareDatetime


def spool_dir(config: Config) -> Path:
    """<state_dir>/spool."""
    return config.state_dir / "spool"


def write_record(config: Config, record: DhcpRecord) -> Path:
    """Queue a record for the daemon (atomic: the daemon never sees half a file)."""
    directory = spool_dir(config)
    # Names sort by time, so the listener applies records in the order they came.
    path = directory / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
    fsops.write_atomic(path, record.model_dump_json().encode(), mode=0o640)
    return path


def now() -> datetime:
    """The time a hook stamps on its record."""
    return datetime.now(UTC)


class SpoolListener(Component):
    """The DHCP-hook listener component: applies spooled records to node states."""

    name = "spool"

    def __init__(self, config: Config, db: Database, nodes: NodeBook) -> None:
        self.directory = spool_dir(config)
        self.rejected_dir = self.directory / "rejected"
        self.db = db
        self.nodes = nodes
        self.applied = 0

    async def setup(self) -> None:
        """The hooks' directory exists before they write to it."""
        self.directory.mkdir(parents=True, exist_ok=True)

    async def run(self) -> None:
        """Poll the spool directory; a hook's record is applied within POLL_S."""
        while True:
            self.drain()
            await asyncio.sleep(POLL_S)

    def drain(self) -> int:
        """Apply every record present (in batches); returns how many were applied."""
        total = 0
        while True:
            names = sorted(n for n in os.listdir(self.directory) if n.endswith(".json"))
            if not names:
                return total
            total += self._apply(names[:BATCH])

    def _apply(self, names: list[str]) -> int:
        done: list[Path] = []
        with self.db.transaction() as tx:
            for name in names:
                path = self.directory / name
                record = self._load(path)
                if record is None:
                    continue
                try:
                    self._record(tx, record)
                except ValueError as exc:
                    self._reject(path, f"cannot apply: {exc}")
                    continue
                done.append(path)
        for path in done:
            path.unlink(missing_ok=True)
        self.applied += len(done)
        return len(names)

    def _record(self, tx: Tx, record: DhcpRecord) -> None:
        lease = DhcpLease(
            at=record.at, ip=record.ip, firmware=record.firmware, hostname=record.hostname
        )
        self.nodes.apply(tx, record.mac, lease)

    def _reject(self, path: Path, reason: str) -> None:
        log.warning("rejected spool record", file=path.name, reason=reason)
        self.rejected_dir.mkdir(exist_ok=True)
        os.replace(path, self.rejected_dir / path.name)

    def _load(self, path: Path) -> DhcpRecord | None:
        try:
            data = _read_regular(path, MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._reject(path, str(exc))
            return None
        if len(data) > MAX_RECORD_BYTES:
            self._reject(path, f"larger than {MAX_RECORD_BYTES} bytes")
            return None
        try:
            return DhcpRecord.model_validate_json(data)
        except ValidationError as exc:
            err = first_error(exc)
            self._reject(path, f"{err.field}: {err.problem}" if err.field else err.problem)
            return None


def _read_regular(path: Path, limit: int) -> bytes:
    """Up to limit bytes of path, which must be a regular file.

    The spool directory is writable by the DHCP hook: a FIFO or device planted
    there must not block the event loop (O_NONBLOCK), a symlink must not make
    us read elsewhere (O_NOFOLLOW).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path.name}: not a regular file")
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
