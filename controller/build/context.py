"""What a build's steps share: one context, filled in step by step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from controller.build.builders import Builder
from controller.build.overlays import OverlayItem
from controller.config.models import Config
from controller.core.errors import BuildError
from controller.recipes import Recipe
from controller.store import treeindex
from controller.store.layout import LabelPaths
from controller.store.manifest import BootArtifact, Manifest

Progress = Callable[[str, str], None]  # (step, message)


@dataclass
class BuildContext:
    """Everything the steps share; each step fills in what the next ones need."""

    config: Config
    label: str
    paths: LabelPaths
    build_id: str
    rebuild: bool
    progress: Progress
    log_file: Path
    recipe_path: Path = field(init=False)
    recipe: Recipe = field(init=False)
    builder: Builder = field(init=False)
    overlays_only: bool = False
    insecure_test_password: bool = False
    force: bool = False  # a new version even if identical to the active one
    unchanged: str = ""  # the active version this build turned out identical to
    base_key: str = ""
    base_digest: str = ""
    reused_base: bool = False
    index: treeindex.Index = field(default_factory=dict)
    overlay_items: list[OverlayItem] = field(default_factory=list)
    overlay_digest: str = ""
    kernel: BootArtifact | None = None
    initrd: BootArtifact | None = None
    kernel_version: str = ""
    version: str = ""
    manifest: Manifest | None = None

    @property
    def staging(self) -> Path:
        """This build's private directory."""
        return self.paths.staging / self.build_id

    @property
    def rootfs(self) -> Path:
        """The tree being built."""
        return self.staging / "rootfs"

    @property
    def image_name(self) -> str:
        """How errors name the tree being built."""
        return f"image of {self.label} (build {self.build_id})"

    def say(self, message: str) -> None:
        """Progress line for the current step."""
        self.progress(self._step, message)

    def written_manifest(self) -> Manifest:
        """The manifest the manifest step wrote."""
        if self.manifest is None:
            raise BuildError("manifest", "no manifest was written")
        return self.manifest

    _step: str = ""


class Unchanged(Exception):
    """The build's content is the active version's: no new version is made."""
