"""At start: the labels whose inputs changed while no controller watched them.

The watcher sees edits only while the daemon runs. At start the daemon
compares each label's current inputs, as a build would compute them (the
builder's input key over the recipe and every file it reads, and the overlay
digest), with those recorded in the manifests of its active and newest
versions. A label matching neither is rebuilt: overlay-only when its base is
the active version's, else in full. A label never built has nothing to
compare with and waits for an edit or a `netroot build`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from controller.build.builders import builder_for
from controller.build.overlays import overlay_digest, scan_overlays
from controller.config.models import Config
from controller.core.errors import NetrootError
from controller.core.log import get_logger
from controller.daemon.debounce import Rebuild
from controller.recipes import load_recipe
from controller.store import versions as store
from controller.store.layout import label_paths

log = get_logger("catchup")


@dataclass(frozen=True, slots=True)
class Inputs:
    """What a version was built from: the base tree's input key and the overlays' digest."""

    base_key: str
    overlay_digest: str


def decide(current: Inputs | None, active: Inputs | None, newest: Inputs | None) -> Rebuild | None:
    """The rebuild a label needs at start (pure).

    current None: the inputs cannot be computed (a recipe that no longer
    loads, a missing source): a build says what is wrong. The newest version
    counts as well as the active one: a version built but not activated (manual
    activation) or rolled back from was built from its inputs already.
    """
    if active is None and newest is None:
        return None
    if current is None:
        return "full"
    if current in (active, newest):
        return None
    if active is not None and current.base_key == active.base_key:
        return "overlay"
    return "full"


def current_inputs(config: Config, label: str) -> Inputs:
    """The label's inputs now, as `netroot build` would compute them; NetrootError or
    OSError when the recipe or a source cannot be read."""
    path = config.recipe_path(label)
    # A plaintext test password is the CLI's business (--insecure-test-password):
    # it changes no input, so it must not make the label look changed.
    recipe = load_recipe(path, allow_plaintext_password=True)
    key = builder_for(recipe, base_dir=config.base_dir).input_key(recipe, path)
    dirs = [config.overlays_dir / name for name in config.overlay_names(label)]
    return Inputs(key, overlay_digest(scan_overlays(dirs)))


def _recorded(config: Config, label: str, version: str | None) -> Inputs | None:
    if version is None:
        return None
    try:
        manifest = store.read_manifest(label_paths(config, label), version)
    except (NetrootError, OSError, ValueError):
        return None  # pruned meanwhile, or unreadable: nothing to compare with
    return Inputs(manifest.base_key, manifest.overlay_digest)


def stale_labels(config: Config, skip: Collection[str] = ()) -> dict[str, Rebuild]:
    """Labels (but those in skip) whose inputs changed since their active and newest
    versions were built."""
    out: dict[str, Rebuild] = {}
    for label in sorted(set(config.labels) - set(skip)):
        paths = label_paths(config, label)
        try:
            versions = store.version_ids(paths)
            active = store.active_version(paths)
        except (NetrootError, OSError) as exc:
            log.warning("cannot read the store", label=label, error=str(exc))
            continue
        newest = versions[-1] if versions else None
        try:
            current: Inputs | None = current_inputs(config, label)
        except (NetrootError, OSError, ValueError) as exc:
            log.warning("inputs unreadable", label=label, error=str(exc))
            current = None
        kind = decide(current, _recorded(config, label, active), _recorded(config, label, newest))
        if kind is not None:
            out[label] = kind
    return out
