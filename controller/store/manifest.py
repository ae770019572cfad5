"""The manifest of a version: what it is made of and how to check it is complete."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from controller.core.model import Model

MANIFEST_SCHEMA = 1


class BootArtifact(Model):
    """A kernel or initramfs in the version's boot/ directory."""

    name: str
    source: str = Field(description="path inside rootfs it was taken from")
    size: int
    sha256: str


class Manifest(Model):
    """manifest.json of a version (docs/design.md §4)."""

    schema_version: int = MANIFEST_SCHEMA
    version: str
    label: str
    created: datetime
    builder: str
    recipe: str
    recipe_sha256: str
    base_key: str = Field(description="digest of every input of the base tree")
    overlay_digest: str = Field(description="digest of the overlay trees applied")
    parent: str | None = Field(None, description="active version this one was cloned beside")
    kernel_version: str
    kernel: BootArtifact
    initrd: BootArtifact
    boot_digest: str
    tree_digest: str = Field(description="sha256 of files.idx, the index of rootfs")
    file_count: int
    size_bytes: int
    live_edits: int = Field(0, description="times `netroot shell --live` changed it in place")
    build_id: str = Field("", description="the build that made it (names its log file)")
