"""Serving versions to nodes: TFTP boot files and loaders, NFS exports, DHCP, nbd."""
