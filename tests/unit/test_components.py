"""The one base of the daemon's components: entering sets up, leaving tears down, run is a must."""

from __future__ import annotations

import pytest

from controller.daemon.components import Component


class Recorder(Component):
    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def setup(self) -> None:
        self.calls.append("setup")

    async def teardown(self) -> None:
        self.calls.append("teardown")

    async def run(self) -> None:
        self.calls.append("run")


class Plain(Component):
    name = "plain"

    async def run(self) -> None:
        return None


async def test_entering_sets_up_and_leaving_tears_down_even_after_an_error() -> None:
    component = Recorder()
    with pytest.raises(RuntimeError, match="boom"):
        async with component as entered:
            assert entered is component
            await component.run()
            raise RuntimeError("boom")
    assert component.calls == ["setup", "run", "teardown"]


async def test_a_component_with_nothing_to_prepare_needs_only_run() -> None:
    async with Plain() as component:
        await component.run()


def test_a_component_without_run_cannot_be_made() -> None:
    class NoRun(Component):
        name = "norun"

    with pytest.raises(TypeError, match="abstract"):
        NoRun()  # type: ignore[abstract]
