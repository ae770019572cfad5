"""What the node side (base/: agent, remount, host keys) needs in an image, and
recipe checks `netroot validate` warns about. Pure: recipes in, warnings out."""

from __future__ import annotations

from pathlib import Path

from controller.build import secretscan
from controller.recipes.distros import Family
from controller.recipes.models import DefRecipe, DnfRecipe, MmdebstrapRecipe, Recipe

# package -> what fails without it, per package family
NODE_PACKAGES: dict[Family, dict[str, str]] = {
    "deb": {
        "netbase": "/etc/protocols: mount.nfs cannot remount the root without it",
        "mosquitto-clients": "mosquitto_pub/mosquitto_sub: the node agent reports nothing",
        "openssh-server": "no ssh login, no per-node host keys",
    },
    "rpm": {
        "mosquitto": "mosquitto_pub/mosquitto_sub: the node agent reports nothing (EPEL)",
        "openssh-server": "no ssh login, no per-node host keys",
    },
}


def missing_packages(recipe: Recipe) -> dict[str, str]:
    """Node-side packages the recipe does not install, with what breaks."""
    native = recipe.native if isinstance(recipe, DefRecipe) else recipe
    if not isinstance(native, MmdebstrapRecipe | DnfRecipe):
        return {}  # an imported tree: nothing to tell from the recipe
    have = set(native.package_set)
    needed = NODE_PACKAGES[native.info.family]
    return {name: why for name, why in needed.items() if name not in have}


def recipe_warnings(recipe: Recipe, path: Path) -> list[str]:
    """Warnings about a loaded recipe: node-side packages it lacks, secrets it bakes in."""
    warnings = [
        f"{path}: packages: no {name} ({why})" for name, why in missing_packages(recipe).items()
    ]
    native = recipe.native if isinstance(recipe, DefRecipe) else recipe
    if isinstance(native, MmdebstrapRecipe | DnfRecipe) and native.root_password_hash:
        warnings.append(
            f"{path}: root_password_hash: the hash is in /etc/shadow of every version, readable"
            " by every host the export admits (prefer ssh keys per node; see README)"
        )
    sources = [recipe.definition] if isinstance(recipe, DefRecipe) else [path]
    for source in sources:
        try:
            text = source.read_text(errors="replace")
        except OSError:
            continue
        warnings += secretscan.recipe_warnings(text, str(source))
    return warnings
