"""The base layer: nothing here imports another netroot package."""
