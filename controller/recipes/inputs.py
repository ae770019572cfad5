"""The files a loaded recipe's build reads besides its recipe files.

Exactly what the builders' input keys hash: an import recipe's source, the
sources of `files` (and of a .def's `%files`), and what a .def's `%setup`
names by a relative path beside it. The recipe files themselves (the
`extends` chain, a .def, the TOML naming a .def) are recorded by the loader
as it reads them (controller.recipes.load).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from controller.recipes.models import DefRecipe, ImportRecipe, PackageRecipe, Recipe


def setup_sources(recipe: DefRecipe) -> list[Path]:
    """What %setup names by a relative path beside the .def (`rsync -a base/ ...`).

    Their content is part of the build's inputs: an edit to the recipe's base/
    must not reuse a base tree cached from the old one.
    """
    home = recipe.definition.resolve().parent
    found: set[Path] = set()
    for line in recipe.setup.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue  # an unbalanced quote: the shell will say so when %setup runs
        for word in words:
            if word.startswith(("-", "/")) or "$" in word or not word.strip("./"):
                continue
            path = home / word
            if path.exists() and path.resolve().is_relative_to(home):
                found.add(path)
    return sorted(found)


def source_files(recipe: Recipe) -> list[Path]:
    """An import source, `files` and `%files` sources, `%setup` sources, in that order.

    A source that does not exist yet is listed all the same: creating it
    changes the build.
    """
    if isinstance(recipe, ImportRecipe):
        return [recipe.source]
    if isinstance(recipe, PackageRecipe):
        return [copy.src for copy in recipe.files]
    return [*(copy.src for copy in recipe.native.files), *setup_sources(recipe)]
