"""The wire contract, pure.

Event envelope and payloads, topics, node messages, the node state machine.
"""
