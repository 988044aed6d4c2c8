"""Esper: morphogenetic training with telemetry you can trust, live and afterwards."""

__version__ = "0.1.0"
