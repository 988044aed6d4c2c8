"""The Sanctum terminal dashboard (Textual): a live or recorded run at a glance.

Panels: the run header (configuration and progress), the env overview (with each env's
escalations), the Tamiyo panel (losses, entropy per head, gradient norm, update time), the
histories as sparklines (per env: accuracy and host gradient norm; for the policy: reward,
entropy and KL), the seed lifecycle per slot, and the event log (cull reasons and
improvements). The app polls a snapshot source; it never blocks training, which feeds the
aggregator on the hub's delivery thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Header, Sparkline, Static

from esper.karn.sanctum.schema import EnvState, EventLogEntry, SanctumSnapshot
from esper.leyline import ACTION_HEADS

SnapshotSource = Callable[[], SanctumSnapshot]
EVENT_ROWS = 14
ENV_HISTORIES = (("accuracy", "val accuracy"), ("grad_norm", "host grad norm"))
"""Each env's sparklines: (EnvState history attribute prefix, label)."""
POLICY_HISTORIES = (("reward", "policy: mean reward"), ("entropy", "policy: entropy"),
                    ("kl", "policy: KL"))  # fmt: skip
"""The policy's sparklines: (TamiyoState history attribute prefix, label)."""


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _schedule(anneal: dict[str, Any] | int) -> str:
    """The entropy schedule as a person reads it (an int: an earlier build's episode count)."""
    if not anneal:
        return "constant"
    if isinstance(anneal, int):
        return f"anneal over {anneal} episodes"
    return f"anneal to {anneal['end']:g} over {anneal['episodes']} episodes"


def run_status(s: SanctumSnapshot, *, live: bool) -> str:
    """``waiting``, ``running`` (live), the TRAINING_COMPLETED status (with its reason), or,
    for a recorded run that never completed, that it was killed or is still being written."""
    if not s.run_config.run_id:
        return "waiting" if live else "no TRAINING_STARTED in this record"
    status = s.completed.get("status")
    if status is None:
        if live:
            return "running"
        return "[red]UNFINISHED[/red]: no TRAINING_COMPLETED (killed, still running, or cut short)"
    error = s.completed.get("error")
    if status == "completed":
        return "completed"
    return f"[red]{status}[/red]" + (f" ({error})" if error else "")


def plottable(values: Iterable[float]) -> list[float]:
    """A history a sparkline can draw: a NaN or infinite point (a NaN loss, an exploding
    gradient) is drawn at the top of the series, where the eye looks, not dropped."""
    points = list(values)
    finite = [v for v in points if math.isfinite(v)]
    top = max(finite, default=0.0)
    return [v if math.isfinite(v) else top for v in points]


def env_telemetry(s: SanctumSnapshot, e: EnvState) -> str:
    """``DEBUG (escalated)`` while something that went wrong has raised the env's telemetry
    (or every env's, after a policy anomaly); ``escalated Nx`` once its windows have closed
    (the record holds their detail); empty when it never escalated."""
    if e.escalated or s.escalated_run:
        return "DEBUG (escalated)"
    return f"escalated {e.escalations}x" if e.escalations else ""


def run_header(s: SanctumSnapshot, *, live: bool = True) -> str:
    c = s.run_config
    total = s.batch_total_episodes or (c.n_episodes or 0)
    status = run_status(s, live=live)
    lines = [
        f"[b]{c.run_id or 'no run yet'}[/b] │ {c.mode} on {c.task} │ status: {status}",
        f"envs {c.n_envs} x {c.max_epochs} epochs  episodes {s.episodes_completed}/{total}  "
        f"batch {s.batch_idx}  accuracy {_fmt(s.batch_avg_accuracy, '.2f')}% "
        f"(rolling {_fmt(s.batch_rolling_accuracy, '.2f')}%)  reward {_fmt(s.batch_avg_reward)}",
        f"seed {c.seed}  lr {_fmt(c.lr, 'g')}  clip {_fmt(c.clip_ratio, 'g')}  "
        f"entropy {_fmt(c.entropy_coef, 'g')} ({_schedule(c.entropy_anneal)})  "
        f"param budget {c.param_budget:,}  reward mode {s.reward_mode or '-'}  "
        f"resume {c.resume_path or '-'}",
    ]
    if c.world_size > 1:
        lost = s.completed.get("lost_ranks")
        lines.append(
            f"ranks {c.world_size} ({c.local_n_envs} envs each)  restarts {c.restart_count}"
            + (f"  [red]lost ranks {lost}[/red]" if lost else "")
        )
    return "\n".join(lines)


def tamiyo_panel(s: SanctumSnapshot) -> str:
    t = s.tamiyo
    heads = "  ".join(
        f"{h} {getattr(t, f'head_{h}_entropy'):.2f}/{getattr(t, f'head_{h}_grad_norm'):.3f}"
        for h in ACTION_HEADS
    )
    collapsed = "  [red]ENTROPY COLLAPSED[/red]" if t.entropy_collapsed else ""
    return "\n".join(
        [
            f"[b]Tamiyo[/b] │ updates {t.updates} │ batch {t.batch}{collapsed}",
            f"policy loss {t.policy_loss:.4f}  value loss {t.value_loss:.4f}  "
            f"entropy {t.entropy:.3f}",
            f"KL {t.kl_divergence:.4f}  clip {t.clip_fraction:.3f}  "
            f"expl.var {t.explained_variance:.3f}",
            f"grad norm {t.grad_norm:.3f}  update {t.update_time_ms:.1f} ms  "
            f"lr {t.learning_rate:g}",
            f"early stop {t.early_stop_epoch if t.early_stop_epoch is not None else '-'}  "
            f"steps {t.train_steps}",
            f"heads (entropy/grad): {heads}",
        ]
    )


def _event_row(e: EventLogEntry) -> tuple[str, ...]:
    when = datetime.fromtimestamp(e.timestamp_ns / 1e9, UTC).strftime("%H:%M:%S")
    d = e.details
    parts = [f"{k}={d[k]:.2f}" if isinstance(d[k], float) else f"{k}={d[k]}" for k in d]
    return (when, e.event_type, "" if e.env_id is None else str(e.env_id), e.slot_id or "",
            " ".join(parts) or e.message)  # fmt: skip


class SanctumApp(App[None]):
    """Polls ``source`` every ``interval`` seconds and redraws."""

    TITLE = "Esper Sanctum"
    CSS = """
    #run-header { height: 3; padding: 0 1; background: $boost; }
    #middle { height: 12; }
    #envs { width: 2fr; }
    #tamiyo { width: 1fr; padding: 0 1; border-left: solid $accent; }
    #histories { height: 7; }
    #env-histories { width: 2fr; }
    #policy-histories { width: 1fr; border-left: solid $accent; }
    .spark-row { height: 1; }
    .spark-label { width: 22; }
    Sparkline { width: 1fr; height: 1; }
    #seeds { height: 10; }
    #events { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        ("q", "quit", "Quit"),
        ("r", "refresh_view", "Refresh"),
        Binding("ctrl+c", "interrupt", "Stop training", priority=True),
    ]

    def __init__(
        self,
        source: SnapshotSource,
        interval: float = 0.5,
        *,
        on_interrupt: Callable[[str], None] | None = None,
        live: bool = True,
    ) -> None:
        """``on_interrupt(reason)``: called on Ctrl-C or SIGTERM while the UI runs (a live
        run stops training with it); the app then exits with ``interrupted_by`` set. ``live``:
        False for a recorded run (a run without TRAINING_COMPLETED then shows as unfinished)."""
        super().__init__()
        self.source = source
        self.interval = interval
        self.on_interrupt = on_interrupt
        self.live = live
        self.interrupted_by: BaseException | None = None
        self._sparks: dict[str, Sparkline] = {}

    def action_interrupt(self) -> None:
        """Ctrl-C: stop training (live) and leave; in a terminal UI it arrives as a key."""
        self._interrupt(KeyboardInterrupt("Ctrl-C in the Sanctum UI"), "Ctrl-C in the Sanctum UI")

    def _interrupt(self, exc: BaseException, reason: str) -> None:
        self.interrupted_by = exc
        if self.on_interrupt is not None:
            self.on_interrupt(reason)
        self.exit()

    def _on_sigterm(self) -> None:
        self._interrupt(SystemExit(128 + signal.SIGTERM), "SIGTERM")

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield Static(id="run-header")
        with Horizontal(id="middle"):
            yield DataTable(id="envs", zebra_stripes=True)
            yield Static(id="tamiyo")
        with Horizontal(id="histories"):
            yield VerticalScroll(id="env-histories")
            with Vertical(id="policy-histories"):
                for key, label in POLICY_HISTORIES:
                    with Horizontal(classes="spark-row"):
                        yield Static(label, classes="spark-label")
                        yield self._spark(key)
        yield DataTable(id="seeds", zebra_stripes=True)
        yield DataTable(id="events", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        # SIGTERM through the event loop (safe at any point of Textual's code); the app's
        # caller restores its own handler afterwards.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._on_sigterm)
        self.query_one("#envs", DataTable).add_columns(
            "env", "epoch", "telemetry", "val acc %", "val loss", "grad norm", "seeds",
            "rollbacks", "anomalies", "step ms", "fps",
        )  # fmt: skip
        self.query_one("#seeds", DataTable).add_columns(
            "env", "slot", "seed", "blueprint", "stage", "alpha", "Δacc", "grad health",
            "epochs", "outcome / reason",
        )  # fmt: skip
        self.query_one("#events", DataTable).add_columns("time", "event", "env", "slot", "details")
        self.action_refresh_view()
        self.set_interval(self.interval, self.action_refresh_view)

    def _spark(self, key: str) -> Sparkline:
        spark = self._sparks.get(key)
        if spark is None:
            spark = self._sparks[key] = Sparkline([], summary_function=max)
        return spark

    def _refresh_histories(self, s: SanctumSnapshot) -> None:
        for key, _label in POLICY_HISTORIES:
            self._spark(key).data = plottable(getattr(s.tamiyo, f"{key}_history"))
        rows = self.query_one("#env-histories", VerticalScroll)
        for env_id in sorted(s.envs):
            e = s.envs[env_id]
            for key, label in ENV_HISTORIES:
                name = f"{key}-{env_id}"
                if name not in self._sparks:
                    rows.mount(Horizontal(Static(f"env {env_id} {label}", classes="spark-label"),
                                          self._spark(name), classes="spark-row"))  # fmt: skip
                self._sparks[name].data = plottable(getattr(e, f"{key}_history"))

    def action_refresh_view(self) -> None:
        # The refresh timer can fire while the app exits (a live run that just ended): its
        # widgets are being removed then, and there is nothing left to draw.
        with contextlib.suppress(NoMatches):
            self._refresh(self.source())

    def _refresh(self, s: SanctumSnapshot) -> None:
        self._refresh_histories(s)
        self.query_one("#run-header", Static).update(run_header(s, live=self.live))
        self.query_one("#tamiyo", Static).update(tamiyo_panel(s))
        envs = self.query_one("#envs", DataTable)
        envs.clear()
        for env_id in sorted(s.envs):
            e = s.envs[env_id]
            envs.add_row(
                str(env_id), str(e.inner_epoch), env_telemetry(s, e), f"{e.val_accuracy:.2f}",
                f"{e.val_loss:.3f}", f"{e.host_grad_norm:.3f}", str(len(e.seeds)),
                str(e.rollbacks), str(e.anomalies), _fmt(e.throughput.get("step_time_ms"), ".1f"),
                _fmt(e.throughput.get("fps"), ".0f"),
            )  # fmt: skip
        seeds = self.query_one("#seeds", DataTable)
        seeds.clear()
        for env_id in sorted(s.envs):
            for slot_id, seed in sorted(s.envs[env_id].seeds.items()):
                why = seed.outcome + (f" ({seed.reason})" if seed.reason else "")
                seeds.add_row(
                    str(env_id), slot_id, seed.seed_id, seed.blueprint_id, seed.stage,
                    f"{seed.alpha:.2f}", f"{seed.accuracy_delta:+.2f}",
                    f"{seed.gradient_health:.2f}", str(seed.epochs_total), why,
                )  # fmt: skip
        events = self.query_one("#events", DataTable)
        events.clear()
        for entry in list(s.event_log)[-EVENT_ROWS:][::-1]:
            events.add_row(*_event_row(entry))
