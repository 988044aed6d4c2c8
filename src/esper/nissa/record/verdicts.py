"""What a record says went wrong, and what the telemetry says of itself, as lines a person
reads: the anomaly report (when, where, what, and the escalation that recorded its detail) and
the telemetry's own account (TELEMETRY_CLOSED). Used by ``esper telemetry summarize``."""

from __future__ import annotations

from collections.abc import Sequence

from esper.leyline import TelemetryEvent, TelemetryEventType


def account_lines(events: Sequence[TelemetryEvent]) -> list[str]:
    """The telemetry's own account of the run (TELEMETRY_CLOSED, one per process), or why
    the record has none."""
    closed = [e for e in events if e.event_type is TelemetryEventType.TELEMETRY_CLOSED]
    if not closed:
        started = any(e.event_type is TelemetryEventType.TRAINING_STARTED for e in events)
        return ["telemetry account: none in the record (the run was killed, or recorded by an "
                "older Esper)"] if started else []  # fmt: skip
    lines = []
    for e in closed:
        d = e.data
        who = "" if e.rank is None else f" of rank {e.rank}"
        verdict = "every event kept" if d.get("complete") else "EVENTS LOST"
        lines.append(f"telemetry account{who}: {d.get('emitted')} events before it, {verdict}; "
                     f"dropped at the hub: {(d.get('dropped') or {}).get('hub', 0)}")  # fmt: skip
        for name, delivered in (d.get("delivered") or {}).items():
            counts = {k: (d.get(k) or {}).get(name, 0) for k in ("dropped", "failed", "lost")}
            lines.append(f"  {name}: delivered {delivered}, "
                         + ", ".join(f"{k} {n}" for k, n in counts.items()))  # fmt: skip
    return lines


def anomaly_report(events: Sequence[TelemetryEvent]) -> list[str]:
    """One line per anomaly (gradient anomalies and loss spikes, rollbacks, regression culls):
    when, where, what, and the epochs its escalation recorded at debug level."""
    windows: dict[str, tuple[int | None, int | None, int]] = {}  # trigger id -> env, from, to
    opened: dict[tuple[int | None, int | None], TelemetryEvent] = {}
    for e in events:
        if e.event_type is not TelemetryEventType.TELEMETRY_LEVEL_CHANGED:
            continue
        key = (e.rank, e.data.get("env_id"))
        if e.data.get("to_level") == "debug":
            opened[key] = e
        elif key in opened:
            start = opened.pop(key)
            trigger = start.data.get("trigger_event_id")
            if isinstance(trigger, str):
                windows[trigger] = (start.data.get("env_id"), start.epoch,
                                    int(e.data.get("until_epoch", 0)))  # fmt: skip
    unclosed = {  # the record ends inside these windows (a killed run): say so, not "none"
        s.data.get("trigger_event_id"): s for s in opened.values()
    }
    lines = []
    for e in events:
        what = _anomaly(e)
        if what is None:
            continue
        d = e.data
        env = "policy" if d.get("env_id") is None else f"env {d.get('env_id')}"
        rank = "" if e.rank is None else f"rank {e.rank} "
        window = windows.get(e.event_id)
        still_open = unclosed.get(e.event_id)
        if still_open is not None:
            who = "every env" if still_open.data.get("env_id") is None else (
                f"env {still_open.data.get('env_id')}")  # fmt: skip
            detail = (f"{who} at debug from epoch {still_open.epoch}; the record ends inside "
                      "the window")  # fmt: skip
        elif window is None:
            detail = "no escalation"
        else:
            who = "every env" if window[0] is None else f"env {window[0]}"
            detail = f"{who} at debug, epochs {window[1]}..{window[2]}"
        when = e.timestamp.isoformat(timespec="seconds")
        lines.append(f"{when} {rank}{env} epoch {e.epoch}: {what}; {detail}")
    return lines


def _anomaly(e: TelemetryEvent) -> str | None:
    d = e.data
    if e.event_type is TelemetryEventType.GRADIENT_ANOMALY:
        value, threshold = d.get("value"), d.get("threshold")
        bound = "" if threshold is None else f" (threshold {threshold:.3g})"
        return f"{d.get('scope')} {d.get('kind')}, {value:.3g}{bound}"
    if e.event_type is TelemetryEventType.GOVERNOR_ROLLBACK:
        return f"rollback on {d.get('reason')} (loss {d.get('loss_at_panic')})"
    if e.event_type is TelemetryEventType.SEED_CULLED and d.get("reason") == "blend_regression":
        return f"seed {e.seed_id} in {e.slot_id} culled for a blend regression"
    return None
