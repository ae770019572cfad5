"""The daemon's HTTP server: /metrics and the read-only API (docs/design.md §12)."""
