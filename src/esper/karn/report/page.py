"""The report as one HTML file: the text (run cards, verdicts, tables) is written here; the
curves and the seeds' timeline are drawn by the page's script from the data embedded in it.

The page's Content-Security-Policy (``default-src 'none'``) forbids every request: whatever
the file holds is all it can show, and nothing it does can reach a network.
"""

from __future__ import annotations

import bisect
import html
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from esper.karn.report.charts import CHARTS, SECTIONS
from esper.karn.report.views import Band, Marker, RunView, Series

RUN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
               "#e377c2")  # fmt: skip

CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:"
)

STATE_CLASS = {"completed": "ok", "interrupted": "warn", "partial": "warn", "unknown": "warn"}
"""A run's state -> its badge's class (any other state is bad)."""


def esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def fmt(v: Any) -> str:
    """A number as the tables print it (4 significant digits; NaN and infinities by name)."""
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, int | float):
        return esc(v)
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf")
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.4g}"


def _percent(v: Any) -> str:
    return f"{v:.2f}%" if isinstance(v, int | float) and math.isfinite(v) else fmt(v)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def _round(v: float, digits: int = 6) -> float | None:
    if not math.isfinite(v):
        return None
    return float(f"{v:.{digits}g}")


def _series_json(s: Series) -> dict[str, Any]:
    keep, thinned = s.drawn()
    # Each gap sits before the first drawn point at or after it (thinning keeps gaps' places).
    gaps = [[bisect.bisect_left(keep, g), round(t, 3), round(p, 5)] for g, t, p in s.gaps]
    return {
        "label": s.label,
        "run": s.run,
        "t": [round(s.t[i], 3) for i in keep],
        "p": [round(s.p[i], 5) for i in keep],
        "y": [_round(s.y[i]) for i in keep],
        "total": len(s.y),
        "thinned": thinned,
        "gaps": gaps,
    }


def _marker_json(m: Marker) -> dict[str, Any]:
    return {"run": m.run, "kind": m.kind, "t": round(m.t, 3), "p": round(m.p, 5),
            "epoch": m.epoch, "batch": m.batch, "env": m.env, "rank": m.rank,
            "what": m.what}  # fmt: skip


def _band_json(b: Band) -> dict[str, Any]:
    return {"run": b.run, "kind": b.kind, "label": b.label, "t0": round(b.t0, 3),
            "t1": round(b.t1, 3), "p0": round(b.p0, 5), "p1": round(b.p1, 5),
            "open": b.open_end}  # fmt: skip


def page_data(runs: Sequence[RunView], alert_bands: Sequence[Band]) -> dict[str, Any]:
    """What the page's script draws."""
    charts = []
    for spec in CHARTS:
        series = [_series_json(s) for run in runs for s in run.series if s.chart == spec.id]
        if series:
            charts.append({"id": spec.id, "section": spec.section, "title": spec.title,
                           "unit": spec.unit, "log": spec.log, "series": series})  # fmt: skip
    return {
        "runs": [
            {"id": r.run_id, "color": RUN_COLOURS[r.index % len(RUN_COLOURS)],
             "last_t": round(r.last_t, 3), "last_p": round(r.last_p, 5),
             "max_epochs": r.max_epochs, "lanes": r.lanes}
            for r in runs
        ],
        "charts": charts,
        "markers": [_marker_json(m) for r in runs for m in r.markers],
        "bands": [_band_json(b) for r in runs for b in r.bands]
        + [_band_json(b) for b in alert_bands],
        "seeds": [
            {"run": life.run, "lane": life.lane, "id": life.seed_id, "bp": life.blueprint,
             "outcome": life.outcome, "reason": life.reason,
             "stages": [[st.stage, round(st.t0, 3), round(st.t1, 3), round(st.p0, 5),
                         round(st.p1, 5), st.alpha, st.gates] for st in life.stages]}
            for r in runs for life in r.seeds
        ],
    }  # fmt: skip


def _json_script(data: dict[str, Any]) -> str:
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    # Inside <script>, only "</" can end the element early; "<\/" is the same JSON string.
    return text.replace("</", "<\\/")


def _run_card(r: RunView) -> str:
    s = r.started
    state = r.status.state
    badge = STATE_CLASS.get(state, "bad")
    config = "".join(f"<tr><th>{esc(k)}</th><td>{esc(json.dumps(v))}</td></tr>"
                     for k, v in sorted(s.items()))  # fmt: skip
    rows = [
        ("mode", s.get("mode", "-")),
        ("task", s.get("task", "-")),
        ("started", r.start),
        ("last event", r.end),
        ("duration", _duration(r.duration)),
        ("world size", f"{r.world_size} rank(s) on {len(r.nodes) or 1} node(s)"
         + (f": {', '.join(r.nodes)}" if r.nodes else "")),
        ("envs", s.get("n_envs", "-")),
        ("episodes", f"{(r.completed or {}).get('episodes_completed', '-')} of "
                     f"{s.get('n_episodes', '-')}"),
        ("final accuracy", _percent((r.completed or {}).get("final_accuracy"))),
    ]  # fmt: skip
    cells = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    ranks = ""
    if r.ranks:
        ranks = "<table class='ranks'><tr><th>rank</th><th>node</th><th>events</th>" \
                "<th>state</th><th>last event</th></tr>" + "".join(
            f"<tr class='{STATE_CLASS.get(k.state, 'bad') if k.state != 'completed' else 'ok'}'>"
            f"<td>{k.rank}</td><td>{esc((k.started.data.get('node') if k.started else '') or '-')}"
            f"</td><td>{k.events:,}</td><td>{esc(k.state)}</td>"
            f"<td>{esc(k.last if k.events else '-')}</td></tr>"
            for k in r.ranks
        ) + "</table>"  # fmt: skip
    detail = (f"<p class='detail {badge}'>{esc(r.status.detail)}</p>"
              if r.status.detail and state != "completed" else "")  # fmt: skip
    return (
        f"<div class='card' data-run='{r.index}'>"
        f"<h3><span class='swatch' style='background:{RUN_COLOURS[r.index % len(RUN_COLOURS)]}'>"
        f"</span>{esc(r.run_id)} <span class='badge {badge}' data-state='{esc(state)}'>"
        f"{esc(state)}</span></h3>{detail}<table class='kv'>{cells}</table>{ranks}"
        f"<details><summary>configuration (TRAINING_STARTED, {len(s)} fields)</summary>"
        f"<table class='kv config'>{config}</table></details></div>"
    )


def _verdict(r: RunView) -> str:
    v = r.verdict
    files = "".join(f"<li><code>{esc(f)}</code>: {n:,} events</li>" for f, n in v.files.items())
    problems = "".join(f"<li class='bad'>{esc(p)}</li>" for p in v.problems)
    lines = [f"<p>The record holds <b>{v.events:,}</b> events of this run.</p>",
             f"<ul>{files}</ul>" if files else ""]  # fmt: skip
    if problems:
        lines.append(f"<p class='bad'>Lines that could not be read ({len(v.problems)}):</p>"
                     f"<ul>{problems}</ul>")  # fmt: skip
    if v.backends:
        head = "<tr><th>backend</th><th>sent</th><th>delivered</th><th>dropped</th>" \
               "<th>failed</th><th>lost</th></tr>"  # fmt: skip
        body = "".join(
            f"<tr><td>{esc(b.get('name', '-'))}</td>"
            + "".join(f"<td>{fmt(b.get(k))}</td>" for k in
                      ("emitted", "delivered", "dropped", "failed", "lost"))
            + "</tr>" for b in v.backends)  # fmt: skip
        lines.append("<p>Each backend's counts as the run recorded them at its end "
                     "(TELEMETRY_CLOSED: every event before that one). A loss found while the "
                     "backends closed (spans a collector never took) comes after it: the run's "
                     "closing summary and exit status say it.</p>"
                     f"<table class='grid backends'>{head}{body}</table>")  # fmt: skip
    else:
        lines.append("<p class='warn'>The record carries no final counts (no TELEMETRY_CLOSED: "
                     "the run was killed, or recorded by an older Esper).</p>")  # fmt: skip
    if v.warnings:
        rows = "".join(f"<tr><td>{esc(t)}</td><td>{esc(reason)}</td><td>{esc(d)}</td></tr>"
                       for t, reason, d in v.warnings)  # fmt: skip
        lines.append(f"<p class='warn'>The telemetry warned about itself {len(v.warnings)} "
                     f"time(s):</p><table class='grid'><tr><th>time</th><th>reason</th>"
                     f"<th>detail</th></tr>{rows}</table>")  # fmt: skip
    else:
        lines.append("<p class='ok'>No TELEMETRY_WARNING: no event was dropped or lost while "
                     "the run recorded.</p>")  # fmt: skip
    return f"<div class='card' data-run='{r.index}'><h3>{esc(r.run_id)}</h3>{''.join(lines)}</div>"


def _stats_table(chart: str, runs: Sequence[RunView]) -> str:
    many = len(runs) > 1
    rows = []
    for r in runs:
        for s in r.series:
            if s.chart != chart:
                continue
            st = s.stats()
            run = f"<td>{esc(r.run_id)}</td>" if many else ""
            cells = [esc(s.label), f"{st['count']:,}", fmt(st["min"]), fmt(st["max"]),
                     fmt(st["last"]), str(st["nonfinite"] or "")]  # fmt: skip
            rows.append(f"<tr>{run}{''.join(f'<td>{c}</td>' for c in cells)}</tr>")
    head = (
        "<th>run</th>" if many else ""
    ) + "<th>series</th><th>points</th><th>min</th><th>max</th><th>last</th><th>non-finite</th>"
    return f"<table class='grid stats'><tr>{head}</tr>{''.join(rows)}</table>"


def _anomaly_table(runs: Sequence[RunView]) -> str:
    markers = [m for r in runs for m in r.markers]
    if not markers:
        return "<p class='ok'>Nothing went wrong: no gradient anomaly, loss spike, rollback or " \
               "regression cull in the record.</p>"  # fmt: skip
    many = len(runs) > 1
    head = ("<th>run</th>" if many else "") + (
        "<th>time (UTC)</th><th>rank</th><th>env</th><th>batch</th><th>epoch</th><th>kind</th>"
        "<th>what</th><th>value</th><th>threshold</th><th>trace id</th><th>span id</th>"
    )
    rows = []
    for m in sorted(markers, key=lambda m: (m.run, m.ns)):
        run = f"<td>{esc(runs[m.run].run_id)}</td>" if many else ""
        rows.append(
            f"<tr class='{m.kind}' data-kind='{m.kind}' data-epoch='{m.epoch}'>{run}"
            f"<td>{esc(m.time)}</td><td>{fmt(m.rank)}</td>"
            f"<td>{'policy' if m.env is None else m.env}</td><td>{m.batch}</td>"
            f"<td>{fmt(m.epoch)}</td><td>{esc(m.kind.replace('_', ' '))}</td>"
            f"<td>{esc(m.what)}</td><td>{fmt(m.value)}</td><td>{fmt(m.threshold)}</td>"
            f"<td><code>{esc(m.trace_id)}</code></td>"
            f"<td><code title='{esc(m.span)}'>{esc(m.span_id)}</code></td></tr>"
        )
    windows = [b for r in runs for b in r.bands if b.kind == "escalation"]
    esc_rows = "".join(
        f"<tr><td>{esc(b.label)}</td><td>{b.t0:.1f} s .. {b.t1:.1f} s"
        f"{' (the record ends inside it)' if b.open_end else ''}</td></tr>"
        for b in windows
    )
    escalations = (f"<h3>Escalation windows ({len(windows)})</h3><table class='grid'>"
                   f"<tr><th>window</th><th>from the run's start</th></tr>{esc_rows}</table>"
                   if windows else "")  # fmt: skip
    return (
        f"<p>{len(markers)} event(s). The trace and span ids name the span of each moment in "
        "the run's trace (live, or sent again with <code>esper telemetry replay "
        "--otlp-endpoint</code>): open them in Tempo.</p>"
        f"<table class='grid anomalies'><tr>{head}</tr>{''.join(rows)}</table>{escalations}"
    )


def _alerts(alerts: Sequence[Band] | None, note: str) -> str:
    if alerts is None:
        return (
            "<p class='muted'>Not evaluated: <code>esper report --alerts</code> shows which "
            "shipped alerts would have fired, and when (it needs promtool).</p>"
        )
    if not alerts:
        return f"<p class='ok'>No shipped alert would have fired. {esc(note)}</p>"
    rows = "".join(f"<tr><td>{esc(b.label)}</td><td>{b.t0:.1f} s</td><td>{b.t1:.1f} s</td></tr>"
                   for b in alerts)  # fmt: skip
    return (
        f"<p class='warn'>{len(alerts)} alert(s) would have fired; each is a band on every "
        f"curve. {esc(note)}</p><table class='grid alerts'><tr><th>alert</th>"
        f"<th>firing from</th><th>to</th></tr>{rows}</table>"
    )


def render(
    runs: Sequence[RunView],
    assets: dict[str, str],
    *,
    alerts: Sequence[Band] | None = None,
    alerts_note: str = "",
) -> str:
    """The whole report page."""
    data = page_data(runs, alerts or ())
    title = " vs ".join(r.run_id for r in runs)
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    drawn = {c["section"] for c in data["charts"]}
    sections = []
    for sid, name in SECTIONS:
        if sid not in drawn:
            continue
        charts = "".join(
            f"<figure class='chart' id='chart-{spec.id}' data-chart='{spec.id}'>"
            f"<figcaption><b>{esc(spec.title)}</b> <button class='png' data-chart='{spec.id}'>"
            f"PNG</button><br><small>{esc(spec.help)}</small></figcaption>"
            f"<div class='plot'></div>{_stats_table(spec.id, runs)}</figure>"
            for spec in CHARTS
            if spec.section == sid and any(c["id"] == spec.id for c in data["charts"])
        )
        sections.append(f"<section id='{sid}'><h2>{esc(name)}</h2><div class='charts'>"
                        f"{charts}</div></section>")  # fmt: skip
    nav = "".join(
        f"<a href='#{sid}'>{esc(name)}</a>"
        for sid, name in [("run", "Run"), ("verdict", "Telemetry"), *[
            (s, n) for s, n in SECTIONS if s in drawn], ("seeds", "Seeds"),
            ("wrong", "What went wrong"), ("alerts", "Alerts")]
    )  # fmt: skip
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Esper report: {esc(title)}</title>
<style>{assets["uplot_css"]}</style>
<style>{assets["report_css"]}</style>
</head><body>
<header><h1>Esper run report</h1><div class="sub">{esc(title)} &middot; made {generated}</div>
<div class="controls">
<label>x axis <select id="xmode"><option value="p">training progress (batches)</option>
<option value="t">wall time since start (s)</option></select></label>
<label>smoothing <input id="smooth" type="range" min="0" max="0.99" step="0.01" value="0.6">
<output id="smooth-value">0.60</output></label>
</div><nav>{nav}</nav></header>
<main>
<div class="top"><section id="run"><h2>Run</h2>
<div class="cards">{"".join(_run_card(r) for r in runs)}</div></section>
<section id="verdict"><h2>The telemetry's own verdict</h2>
<div class="cards">{"".join(_verdict(r) for r in runs)}</div></section></div>
{"".join(sections)}
<section id="seeds"><h2>Seeds</h2><p class="muted">One lane per env and slot; each seed's
stages in order, and how it ended. Hover a stage for its gates.</p>
<div class="legend" id="stage-legend"></div><div id="timeline"></div></section>
<section id="wrong"><h2>What went wrong</h2>{_anomaly_table(runs)}</section>
<section id="alerts"><h2>Alerts</h2>{_alerts(alerts, alerts_note)}</section>
</main>
<script id="esper-data" type="application/json">{_json_script(data)}</script>
<script>{assets["uplot_js"]}</script>
<script>{assets["report_js"]}</script>
</body></html>
"""
