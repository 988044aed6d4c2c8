"""The telemetry side of every command that emits: its hub, its backends, signals, a close that
loses nothing, and one verdict on whether the telemetry was kept.

``RunSession(spec, run_id=...)`` takes the process hub (or the one given) under the run's id,
attaches the backends ``spec`` names through the one factory (``esper.nissa.backends``), and
makes SIGTERM unwind like Ctrl-C so the run is recorded as interrupted and its telemetry
delivered. ``close()`` waits for every Prometheus that scraped the run to read the final state
when asked (Ctrl-C or SIGTERM cut only that wait short), then delivers and closes every backend
with further signals ignored, bounded by ``CLOSE_TIMEOUT_SECONDS``.

``summary()`` is the closing report and ``exit_status(code)`` the verdict that ``esper train``,
``esper telemetry replay`` and ``esper offline compare`` share: a command that did its work but
lost or dropped events, or emitted events that broke the payload catalogue, exits
``EXIT_TELEMETRY_LOST``.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass

from esper.leyline import (
    RankInfo,
    Severity,
    TelemetryConfig,
    TelemetryEvent,
    TelemetryEventType,
    TelemetryLevel,
    make_event,
    sink_failures,
)
from esper.nissa import STOP_SIGNALS, NissaHub, get_hub, install_signal_handlers
from esper.nissa.backends import BackendSpec, TelemetrySetup, attach_backends
from esper.nissa.prometheus.server import LingerResult

CLOSE_TIMEOUT_SECONDS = 30.0
"""How long delivering and closing the telemetry may take at the end of a run."""
REPLAY_FLUSH_SECONDS = 60.0
"""How long a replay waits for its backends to take a burst of events (a backend that hangs
longer loses what overflows, and the summary names the loss)."""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_TELEMETRY_LOST = 3
"""The work finished, but telemetry a user asked for was lost (named in the summary)."""
EXIT_INTERRUPTED = 130
"""Ctrl-C; a signal N exits 128 + N (SIGTERM: 143)."""


@dataclass(frozen=True, slots=True)
class Summary:
    """The closing report of a session's telemetry."""

    lines: tuple[str, ...]
    kept: bool
    """Every event was kept by every backend and matched the payload catalogue."""

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def exit_status(self, code: int) -> int:
        """The command's exit status: ``code`` (the work's own), except that work that
        succeeded but lost telemetry exits ``EXIT_TELEMETRY_LOST``."""
        return EXIT_TELEMETRY_LOST if code == EXIT_OK and not self.kept else code


class RunSession:
    """One command's hub and backends, from start to a complete close and its verdict."""

    def __init__(
        self,
        spec: BackendSpec,
        *,
        run_id: str | None = None,
        ranks: RankInfo | None = None,
        hub: NissaHub | None = None,
        announce: bool = True,
    ) -> None:
        """Raises BackendConfigError naming a path or port that cannot be used (the hub is
        closed again first)."""
        install_signal_handlers()
        self.ranks = ranks if ranks is not None else RankInfo()
        self.hub = hub if hub is not None else get_hub()
        if run_id is not None:
            self.hub.run_id = run_id
        self.hub.rank = self.ranks.rank if self.ranks.distributed else None
        self.linger: LingerResult | None = None
        """What the wait for the final scrape found (None: no wait)."""
        self.linger_seconds = 0.0
        self._sink_failures_before = sink_failures()[0]
        self._since_flush = 0
        try:
            if announce:
                self.setup: TelemetrySetup = attach_backends(self.hub, spec)
            else:
                self.setup = attach_backends(self.hub, spec, announce=lambda _line: None)
        except BaseException:
            self.hub.close()
            raise

    def emit_recorded(self, event: TelemetryEvent) -> None:
        """Emit an event read from a record (``esper telemetry replay``). No training waits on
        a replay, so instead of letting the hub drop what a full queue cannot hold (a record
        is read far faster than a backend writes it), the caller waits for delivery every
        ``hub.safe_burst`` events: a replay keeps every event."""
        self.hub.emit(event)
        self._since_flush += 1
        if self._since_flush >= self.hub.safe_burst:
            self._since_flush = 0
            self.hub.flush(timeout=REPLAY_FLUSH_SECONDS)

    def warn_if_telemetry_is_off(self, config: TelemetryConfig) -> None:
        """One TELEMETRY_WARNING when the level is off (what is kept, if anything)."""
        if config.level is not TelemetryLevel.OFF:
            return
        detail = (
            "telemetry level is off"
            + (
                "; seed lifecycle events stay on (--telemetry-lifecycle-only)"
                if config.lifecycle_only
                else ""
            )
            + "; anomalies do not escalate to debug (--escalate-epochs works at normal)"
        )
        self.hub.emit(
            TelemetryEvent(
                event_type=TelemetryEventType.TELEMETRY_WARNING,
                message=detail,
                data={"reason": "telemetry_disabled", "detail": detail},
                severity=Severity.WARNING,
            )
        )

    def account(self) -> None:
        """Deliver everything emitted so far, then emit TELEMETRY_CLOSED: what each backend
        kept of it, as numbers, so that the record restates the telemetry's verdict (and a
        backfill the dropped and lost series). It goes out before the final scrape, so live
        and backfilled counts agree."""
        self.hub.flush(CLOSE_TIMEOUT_SECONDS)
        stats = self.hub.stats()
        data = {
            "emitted": stats.emitted,
            "delivered": {b.name: b.delivered for b in stats.backends},
            "failed": {b.name: b.failed for b in stats.backends},
            "dropped": stats.dropped_by_backend(),
            "lost": stats.lost_by_backend(),
            "complete": stats.complete,
        }
        kept = "every event kept" if stats.complete else "EVENTS LOST"
        self.hub.emit(make_event(
            TelemetryEventType.TELEMETRY_CLOSED, data,
            message=f"telemetry closed: {stats.emitted} events before this one, {kept}",
            severity=Severity.INFO if stats.complete else Severity.WARNING,
        ))  # fmt: skip

    def close(
        self, *, linger_seconds: float = 0.0, interrupted: bool = False, account: bool = False
    ) -> bool:
        """Emit the telemetry's account of the run when asked (``account``: a training run's
        session; a replay sends the recorded one), wait up to ``linger_seconds`` for every
        Prometheus that scraped the run to read its final state (not after an interrupt), then
        deliver and close everything. True when every event was kept by every backend."""
        if account:
            try:
                self.account()
            except (KeyboardInterrupt, SystemExit):
                print("esper: interrupted before the telemetry's account was written",
                      file=sys.stderr)  # fmt: skip
        prom = self.setup.prometheus
        if prom is not None and linger_seconds > 0 and not interrupted:
            self.linger_seconds = linger_seconds
            try:
                self.hub.flush(CLOSE_TIMEOUT_SECONDS)
                print(f"Waiting up to {linger_seconds:g} s for every Prometheus that scraped "
                      "/metrics to read the final state (Ctrl-C skips the wait)",
                      flush=True)  # fmt: skip
                self.linger = prom.wait_for_final_scrape(linger_seconds)
            except (KeyboardInterrupt, SystemExit):
                print("esper: stopped waiting for the final scrape", file=sys.stderr)
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in STOP_SIGNALS}
        try:
            self.hub.close(CLOSE_TIMEOUT_SECONDS)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.hub.stats().complete

    def summary(self) -> Summary:
        """Where telemetry went, events written, dropped and lost, what each Prometheus read,
        and a plain verdict (of one rank's telemetry, in a multi-rank run)."""
        stats = self.hub.stats()
        rank = self.ranks
        title = "Telemetry summary"
        if rank.distributed:
            title += f" of rank {rank.rank} of {rank.world_size} (node {rank.node})"
        lines = ["", title]
        lines += [f"  {d}" for d in self.setup.destinations] or [
            "  no telemetry destination configured"
        ]
        lines.append(
            f"  events emitted: {stats.emitted}, dropped: {stats.total_dropped}"
            + (f", arrived after close: {stats.late}" if stats.late else "")
            + (f", with no backend attached: {stats.unrouted}" if stats.unrouted else "")
            + f"; telemetry threads used {stats.cpu_seconds:.3f} s of CPU"
        )
        for b in stats.backends:
            extra = "".join(
                f", {label} {n}"
                for label, n in (("lost", b.lost), ("undelivered at close", b.pending))
                if n
            )
            problem = f", last error: {b.last_error}" if b.last_error else ""
            lines.append(
                f"  {b.name}: sent {b.emitted}, delivered {b.delivered}, dropped {b.dropped}, "
                f"failed {b.failed}{extra}{problem}"
            )
        lines += self._linger_lines()
        if stats.complete:
            lines.append("  telemetry complete: every event was kept by every backend")
        else:
            lost = [f"{b.name}: {b.not_kept}" for b in stats.backends if b.not_kept]
            if stats.late:
                lost.append(f"after close: {stats.late}")
            lines.append(
                "  TELEMETRY INCOMPLETE: events were lost ("
                + (", ".join(lost) or f"dropped at the hub: {stats.dropped}")
                + f"); exit status {EXIT_TELEMETRY_LOST} unless the run failed otherwise"
            )
        refused, first = sink_failures()
        refused -= self._sink_failures_before
        if refused:
            lines.append(
                f"  SINK FAILURES: {refused} events were refused by the sink they were emitted "
                f"to and never reached the hub (exit status {EXIT_TELEMETRY_LOST}); first: {first}"
            )
        if stats.invalid:
            lines.append(
                f"  PAYLOAD MISMATCH: {stats.invalid} events did not match the payload "
                f"catalogue (exit status {EXIT_TELEMETRY_LOST}); first of each type: "
                + "; ".join(stats.invalid_examples)
            )
        return Summary(tuple(lines), stats.complete and not stats.invalid and not refused)

    def _linger_lines(self) -> list[str]:
        linger = self.linger
        if linger is None:
            return []
        wait = f"--metrics-linger {self.linger_seconds:g} s"
        if linger.complete:
            return [f"  final state read by every Prometheus that scraped: "
                    f"{', '.join(linger.scraped)}"]  # fmt: skip
        if not linger.scraped and not linger.missed:
            return [f"  FINAL STATE NOT SCRAPED: no Prometheus scraped /metrics within {wait}"]
        return [f"  FINAL STATE NOT SCRAPED by {', '.join(linger.missed)} within {wait}; "
                "the JSONL record holds it"]  # fmt: skip

    def exit_status(self, code: int) -> int:
        """The command's exit status after ``close()`` (see ``Summary.exit_status``)."""
        return self.summary().exit_status(code)
