"""Building a version.

The pipeline of named steps, overlays, the in-image shell, and the package backends.
"""
