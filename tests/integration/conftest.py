"""Fixtures of the integration tests: a real mosquitto on a free loopback port."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration.harness import Broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """mosquitto started for this test only (persistence on, unbounded queues)."""
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not installed (.ci/setup installs it)")
    started = Broker(tmp_path / "broker").start()
    try:
        yield started
    finally:
        started.stop()
