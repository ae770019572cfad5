"""Controller configuration: its models and loading, and import of the original tool's host file.

A sibling of events and recipes, which never import it.
"""
