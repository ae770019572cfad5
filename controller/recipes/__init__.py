"""Recipes: how a root tree is built. Pure models and parsing, no IO at import."""

from controller.recipes.load import load_recipe
from controller.recipes.models import (
    DefRecipe,
    DnfRecipe,
    DnfRepository,
    FileCopy,
    ImportRecipe,
    MmdebstrapRecipe,
    PackageRecipe,
    Recipe,
    Services,
)

__all__ = [
    "DefRecipe",
    "DnfRecipe",
    "DnfRepository",
    "FileCopy",
    "ImportRecipe",
    "MmdebstrapRecipe",
    "PackageRecipe",
    "Recipe",
    "Services",
    "load_recipe",
]
