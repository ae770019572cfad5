"""The one base of the daemon's long-lived components.

`netroot serve` enters every component (in order), then runs each one's
`run()` as a task named after it in one TaskGroup, and leaves them when all
tasks ended. The order of shutdown is the supervisor's business (daemon.app),
so most components have nothing to set up or tear down; the few that do
(an observer thread, a directory, a broker session) say so in `setup` and
`teardown`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Self


class Component(ABC):
    """A long-lived part of the daemon: entered, run as the task `name`, left."""

    name: ClassVar[str]

    async def setup(self) -> None:
        """Prepare what `run` needs, before any component runs (by default nothing)."""
        return

    async def teardown(self) -> None:
        """Release what `setup` took, after every task ended (by default nothing)."""
        return

    @abstractmethod
    async def run(self) -> None:
        """Work until cancelled."""

    async def __aenter__(self) -> Self:
        await self.setup()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.teardown()
