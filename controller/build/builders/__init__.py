"""Builders turn a recipe into a base root tree. One module per backend, one Protocol;
the package-manager backends (dnf, mmdebstrap) share package_backend.PackageBackend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from controller.core.errors import NetrootError
from controller.recipes import Recipe


@dataclass(frozen=True)
class BuildRequest:
    """What a builder gets: the recipe and an empty rootfs to fill, in staging."""

    label: str
    build_id: str
    recipe: Recipe
    recipe_path: Path
    rootfs: Path
    log_file: Path
    cache_dir: Path
    base_dir: Path
    rebuild: bool = False  # ignore the package-stage cache too (fresh packages)


Progress = Callable[[str], None]


class Builder(Protocol):
    """A backend that produces the pre-overlay root tree of a recipe."""

    name: str

    def input_key(self, recipe: Recipe, recipe_path: Path) -> str:
        """Digest of every input that determines the tree (recipe content, sources...)."""
        ...

    def build(self, request: BuildRequest, progress: Progress) -> None:
        """Fill request.rootfs; raise a NetrootError naming what failed."""
        ...


def builder_for(recipe: Recipe, *, base_dir: Path | None = None) -> Builder:
    """The backend a recipe names; base_dir is the base/ tree that goes into its images."""
    # imports inside: keeps backends lazy, and they import this module
    from controller.build.builders.apptainer import ApptainerBuilder  # noqa: PLC0415
    from controller.build.builders.dnf import DnfBuilder  # noqa: PLC0415
    from controller.build.builders.importer import ImportBuilder  # noqa: PLC0415
    from controller.build.builders.legacy import DefBuilder  # noqa: PLC0415
    from controller.build.builders.mmdebstrap import MmdebstrapBuilder  # noqa: PLC0415

    backends: dict[str, Callable[[], Builder]] = {
        "import": ImportBuilder,
        "mmdebstrap": lambda: MmdebstrapBuilder(base_dir),
        "dnf": lambda: DnfBuilder(base_dir),
        "def": lambda: DefBuilder(base_dir),
        "apptainer": lambda: ApptainerBuilder("apptainer", base_dir),
        "singularity": lambda: ApptainerBuilder("singularity", base_dir),
    }
    try:
        return backends[recipe.builder]()
    except KeyError:
        raise NetrootError(f"the {recipe.builder!r} builder is not available yet") from None
