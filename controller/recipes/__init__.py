"""Recipes: how a root tree is built. Pure models and parsing, no IO at import."""

from controller.recipes.load import load_recipe
from controller.recipes.models import ImportRecipe, Recipe

__all__ = ["ImportRecipe", "Recipe", "load_recipe"]
