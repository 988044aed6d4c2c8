"""Command-line entry points: ``esper train``, ``esper telemetry`` and friends."""
