"""What the daemon's components share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from controller.config.models import Config
from controller.daemon.db import Database
from controller.daemon.emit import Emitter
from controller.daemon.images import ImageBook
from controller.daemon.nodebook import NodeBook


@dataclass
class Context:
    """The current config (replaced by a reload) and the state services."""

    config: Config
    config_path: Path | None
    db: Database
    emitter: Emitter
    nodes: NodeBook
    images: ImageBook
