"""Escalation: the detail of ``debug`` telemetry exactly where something went wrong.

A long run records at ``normal`` (or ``minimal``): every decision and every reward breakdown is
too much for hours of training. When something goes wrong in an env (a GRADIENT_ANOMALY of its
host or seeds, a GOVERNOR_ROLLBACK, a seed culled for a blend regression), that env runs at
``debug`` for the epoch it happened in and the ``epochs - 1`` after it, within its episode; a
trigger during a window extends it. When the policy goes wrong (a policy-scope gradient anomaly
or a collapsed entropy, both seen at the PPO update that ends a batch), every env of the run
escalates for the first ``epochs`` epochs of the next batch: under torchrun every rank sees the
same averaged gradients and reduced entropy flag, so every rank escalates its own envs.

Each window is bracketed by two lifecycle events, ``TELEMETRY_LEVEL_CHANGED``: ``from_level``
the run's level, ``to_level`` ``debug``, when it opens; back again when it closes, once every
debug event of its epochs has been emitted (a decision's reward comes with the next epoch).
``env_id`` is null for a window over the whole run. Only a run at ``normal`` escalates: nothing
does at ``debug`` (nothing to add), nor at ``minimal`` or ``off`` with or without
``--telemetry-lifecycle-only`` (a lifecycle-only record asked for no detail), nor with
``epochs`` 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from esper.leyline import (
    Severity,
    TelemetryConfig,
    TelemetryEvent,
    TelemetryEventType,
    emit_event,
)

ET = TelemetryEventType
DEFAULT_ESCALATE_EPOCHS = 3
"""The epoch of the anomaly and the two after it: the controller's next decision, its reward,
and whether the env recovered, at a cost of two debug events per env and epoch."""
REGRESSION_CULL = "blend_regression"
RUN = -1
"""The key of a window over every env of the run."""


@dataclass(slots=True)
class _Window:
    until: int
    reason: str
    trigger_event_id: str | None


class Escalation:
    """Which envs run at ``debug`` in which epochs of the current batch (see the module)."""

    def __init__(
        self, epochs: int, telemetry: TelemetryConfig, emit: Callable[[TelemetryEvent], None]
    ) -> None:
        self.epochs = epochs
        self.telemetry = telemetry
        # At normal only: debug has nothing to add, and minimal is the lifecycle-only record
        # (the same as off with --telemetry-lifecycle-only), which asked for no detail.
        self.enabled = epochs > 0 and telemetry.analytics and not telemetry.debug
        self._emit = emit
        self._level = telemetry.level.name.lower()
        self._open: dict[int, _Window] = {}  # env_id (or RUN) -> its open window
        self._spans: dict[int, list[tuple[int, int]]] = {}  # env_id (or RUN) -> epochs at debug
        self._next_batch: _Window | None = None  # a policy trigger, for the next batch
        self._epoch = 0

    # -- what runs at debug ---------------------------------------------------------------

    def debug(self, env_id: int, epoch: int) -> bool:
        """Whether ``env_id``'s events of ``epoch`` (this batch) are at ``debug``."""
        if self.telemetry.debug:
            return True
        for key in (env_id, RUN):
            for first, last in self._spans.get(key, ()):
                if first <= epoch <= last:
                    return True
        return False

    # -- triggers -------------------------------------------------------------------------

    def watch(
        self, env_id: int, emit: Callable[[TelemetryEvent], None]
    ) -> Callable[[TelemetryEvent], None]:
        """``emit``, wrapped to escalate ``env_id`` on the events that trigger it (an env's
        telemetry sink: its slots, governor and gradient checks all emit through it)."""
        if not self.enabled:
            return emit

        def watching(event: TelemetryEvent) -> None:
            emit(event)
            reason = env_trigger(event)
            if reason is not None:
                self.trigger(env_id, reason, event.event_id)

        return watching

    def trigger(self, env_id: int, reason: str, trigger_event_id: str | None) -> None:
        """Escalate ``env_id`` from the current epoch for ``epochs`` epochs (or extend)."""
        if not self.enabled:
            return
        until = self._epoch + self.epochs - 1
        window = self._open.get(env_id)
        if window is not None:
            window.until = max(window.until, until)
        else:
            window = self._open[env_id] = _Window(until, reason, trigger_event_id)
            self._spans.setdefault(env_id, []).append((self._epoch, until))
            self._announce(env_id, self._level, "debug", window)
        spans = self._spans[env_id]
        spans[-1] = (spans[-1][0], window.until)

    def trigger_policy(self, reason: str, trigger_event_id: str | None) -> None:
        """Escalate every env for the first ``epochs`` epochs of the next batch."""
        if not self.enabled:
            return
        if self._next_batch is None:
            self._next_batch = _Window(self.epochs, reason, trigger_event_id)

    # -- the batch's clock ----------------------------------------------------------------

    def begin_batch(self) -> None:
        """A new batch: every env starts its episode at its run's level, unless the policy
        went wrong at the last update."""
        self._open.clear()
        self._spans.clear()
        self._epoch = 1
        pending, self._next_batch = self._next_batch, None
        if pending is not None:
            self._open[RUN] = pending
            self._spans[RUN] = [(1, pending.until)]
            self._announce(None, self._level, "debug", pending)

    def begin_epoch(self, epoch: int) -> None:
        """Epoch ``epoch`` is about to run; the debug events of the epochs before the last
        one are all out (rewards of epoch e come with epoch e + 1), so windows that ended
        there close."""
        self._epoch = epoch
        for key, window in list(self._open.items()):
            if window.until < epoch - 1:
                self._close(key)

    def end_batch(self) -> None:
        """The episode is over: every window still open closes."""
        for key in list(self._open):
            self._close(key)

    def _close(self, key: int) -> None:
        window = self._open.pop(key)
        self._announce(None if key == RUN else key, "debug", self._level, window)

    def _announce(self, env_id: int | None, frm: str, to: str, window: _Window) -> None:
        where = "every env" if env_id is None else f"env {env_id}"
        emit_event(
            self._emit,
            ET.TELEMETRY_LEVEL_CHANGED,
            {
                "env_id": env_id,
                "from_level": frm,
                "to_level": to,
                "reason": window.reason,
                "trigger_event_id": window.trigger_event_id,
                "until_epoch": window.until,
            },
            message=f"{where}: telemetry {frm} -> {to} through epoch {window.until} "
            f"({window.reason})",
            severity=Severity.WARNING if to == "debug" else Severity.INFO,
            epoch=self._epoch,
        )


def env_trigger(event: TelemetryEvent) -> str | None:
    """The reason ``event`` escalates its env (``TYPE:kind``), or None."""
    t, d = event.event_type, event.data
    if t is ET.GRADIENT_ANOMALY and d.get("scope") in ("host", "seed"):
        return f"GRADIENT_ANOMALY:{d.get('scope')}:{d.get('kind')}"
    if t is ET.GOVERNOR_ROLLBACK:
        return f"GOVERNOR_ROLLBACK:{d.get('reason')}"
    if t is ET.SEED_CULLED and d.get("reason") == REGRESSION_CULL:
        return f"SEED_CULLED:{REGRESSION_CULL}"
    return None
