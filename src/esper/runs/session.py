"""The telemetry side of a run: its hub, its backends, signals, and a close that loses nothing.

``RunSession(config, spec)`` takes the process hub under the run's id, attaches the backends
``spec`` names through the one factory (``esper.nissa.backends``), and makes SIGTERM unwind
like Ctrl-C so the run is recorded as interrupted and its telemetry delivered. ``close()``
waits for a final Prometheus scrape when asked (Ctrl-C or SIGTERM cut only that wait short),
then delivers and closes every backend with further signals ignored, bounded by
``CLOSE_TIMEOUT_SECONDS``, and says whether every event was kept.
"""

from __future__ import annotations

import signal
import sys

from esper.nissa import NissaHub, get_hub, install_signal_handlers
from esper.nissa.backends import BackendSpec, TelemetrySetup, attach_backends
from esper.runs.config import RunConfig

CLOSE_TIMEOUT_SECONDS = 30.0


class RunSession:
    """One run's hub and backends, from start to a complete close."""

    def __init__(
        self, config: RunConfig, spec: BackendSpec, *, hub: NissaHub | None = None
    ) -> None:
        """Raises BackendConfigError naming a path or port that cannot be used (the hub is
        closed again first)."""
        install_signal_handlers()
        self.ranks = config.ranks
        self.hub = hub if hub is not None else get_hub()
        self.hub.run_id = config.run_id
        self.hub.rank = config.ranks.rank if config.ranks.distributed else None
        try:
            self.setup: TelemetrySetup = attach_backends(self.hub, spec)
        except BaseException:
            self.hub.close()
            raise

    def close(self, *, linger_seconds: float = 0.0, interrupted: bool = False) -> bool:
        """Wait up to ``linger_seconds`` for a final scrape (not after an interrupt), then
        deliver and close everything. True when every event was kept by every backend."""
        prom = self.setup.prometheus
        if prom is not None and linger_seconds > 0 and not interrupted:
            try:
                self.hub.flush(CLOSE_TIMEOUT_SECONDS)
                print(f"Waiting up to {linger_seconds:g} s for a final scrape of /metrics "
                      "(Ctrl-C skips the wait)", flush=True)  # fmt: skip
                prom.wait_for_scrape(linger_seconds)
            except (KeyboardInterrupt, SystemExit):
                print("esper train: stopped waiting for the final scrape", file=sys.stderr)
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.hub.close(CLOSE_TIMEOUT_SECONDS)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.hub.stats().complete
