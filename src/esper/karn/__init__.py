"""Analytics over telemetry: the Sanctum aggregator, its snapshot schema and the terminal UI."""
