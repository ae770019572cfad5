"""The base layer: errors, logging, subprocesses, locks, ids, the model base, shipped data.

Imports no other netroot package.
"""
