"""`netroot boot` and `netroot up`.

A qemu VM booting a label over the network, and the servers it needs.
"""
