"""Where the store keeps things (docs/design.md §4). Pure path arithmetic, no IO."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from controller.config.models import TFTP_LINK_DIR, TFTP_VERSIONS_DIR, Config

TMP_MARK = ".tmp-"


def new_version_id(now: datetime, content_digest: str) -> str:
    """Version ids sort by build time (UTC, milliseconds) and carry a short content hash.

    core.ids.STORE_VERSION_RE is the rule these names follow.
    """
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S.") + f"{now.microsecond // 1000:03d}Z"
    return f"{stamp}-{content_digest[:8]}"


@dataclass(frozen=True)
class LabelPaths:
    """Every path the store uses for one label."""

    label: str
    images: Path  # <state_dir>/images/<label>
    export_link: Path  # <export_root>/<label> -> <version>/rootfs
    tftp_link: Path  # <tftp_root>/netroot/<label> -> _versions/<label>/<version>
    tftp_root: Path
    bases: Path  # <state_dir>/cache/bases/<label>: pre-overlay base trees

    @property
    def staging(self) -> Path:
        """In-progress builds and trees being deleted; swept at start-up."""
        return self.images / ".staging"

    @property
    def history(self) -> Path:
        """Activation log: the single source of truth for the active version."""
        return self.images / "history"

    @property
    def lock(self) -> Path:
        """flock(2) file serialising builds, activations and gc of this label."""
        return self.images / ".lock"

    @property
    def menu(self) -> Path:
        """The label's boot menu entry (re-rendered by every activation)."""
        return self.tftp_root / "pxelinux.cfg" / f"netroot-{self.label}"

    def base(self, base_key: str) -> Path:
        """The cached pre-overlay tree built from inputs with this key."""
        return self.bases / self.base_name(base_key)

    @staticmethod
    def base_name(base_key: str) -> str:
        """Directory name of a cached base tree."""
        return base_key[:32]

    def tftp_version(self, version: str) -> Path:
        """The version's kernel and initramfs in the TFTP root (hard links or copies)."""
        return self.tftp_root / TFTP_VERSIONS_DIR / self.label / version

    def version(self, version: str) -> Path:
        """Directory of a committed version."""
        return self.images / version

    def rootfs(self, version: str) -> Path:
        """The version's root tree."""
        return self.images / version / "rootfs"

    def boot(self, version: str) -> Path:
        """The version's kernel and initramfs."""
        return self.images / version / "boot"

    def manifest(self, version: str) -> Path:
        """The version's manifest.json."""
        return self.images / version / "manifest.json"


def label_paths(config: Config, label: str) -> LabelPaths:
    """Paths for a configured (or formerly configured) label."""
    in_config = label in config.labels
    return LabelPaths(
        label=label,
        images=config.state_dir / "images" / label,
        export_link=config.export_link(label) if in_config else config.export_root / label,
        tftp_link=(config.label_tftp_root(label) if in_config else config.tftp_root)
        / TFTP_LINK_DIR
        / label,
        tftp_root=config.label_tftp_root(label) if in_config else config.tftp_root,
        bases=config.state_dir / "cache" / "bases" / label,
    )


def tmp_name(path: Path, token: str) -> Path:
    """The temporary sibling used to replace path atomically (swept at start-up)."""
    return path.with_name(f"{path.name}{TMP_MARK}{token}")
