"""The hub: it takes every event and delivers it to each backend on a lane of its own."""
