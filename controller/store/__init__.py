"""The versioned store: layout, versions, history, activation, recovery, gc.

Knows nothing of serving or events.
"""
