"""Sanctum folds telemetry events into a snapshot that a terminal dashboard draws."""
