"""netroot: lifecycle controller for diskless Linux nodes."""

__version__ = "0.1.0"
