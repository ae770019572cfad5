"""Recipe models. Every recipe is a frozen model with a `builder` discriminator."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from controller.config import Model


class ImportRecipe(Model):
    """Adopt an existing root tree (a directory or a tar archive) as the base."""

    builder: Literal["import"]
    source: Path = Field(description="directory or tar archive (any compression tar reads)")
    kernel: str | None = Field(
        None, description="kernel path inside the tree; default: newest /boot/vmlinuz-*"
    )
    initrd: str | None = Field(
        None, description="initramfs path inside the tree; default: the one matching the kernel"
    )


# Issue 3 widens this union with the package-manager recipes.
Recipe = ImportRecipe
