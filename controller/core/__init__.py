"""The base layer: errors, logging, subprocesses, locks, ids and the model base.

Imports no other netroot package.
"""
