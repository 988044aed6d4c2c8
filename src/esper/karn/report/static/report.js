// Esper run report: draws the curves (uPlot) and the seeds' timeline (SVG) from the data the
// page embeds. What it drew is left in window.esperReport, for tests and for the curious.
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("esper-data").textContent);
  const SERIES_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const MARK_COLOURS = { gradient_anomaly: "#e6550d", loss_spike: "#b15928",
    rollback: "#cb181d", regression_cull: "#6a3d9a" };
  const BAND_COLOURS = { escalation: "rgba(255, 200, 0, 0.16)", alert: "rgba(214, 39, 40, 0.14)" };
  const STAGE_COLOURS = { GERMINATED: "#c7e9c0", TRAINING: "#74c476", BLENDING: "#6baed6",
    PROBATIONARY: "#fd8d3c", FOSSILIZED: "#238b45", CULLED: "#999999", EMBARGOED: "#bdbdbd",
    RESETTING: "#d9d9d9" };
  const manyRuns = D.runs.length > 1;
  const report = window.esperReport = { ready: false, errors: [], charts: {}, timeline: {} };
  window.addEventListener("error", (e) => { report.errors.push(String(e.message)); });

  const state = { x: "p", smooth: 0.6 };
  const plots = [];

  function colour(chart, s, i) {
    return manyRuns ? D.runs[s.run].color : SERIES_COLOURS[i % SERIES_COLOURS.length];
  }

  function fade(hex, alpha) {
    const n = parseInt(hex.slice(1), 16);
    return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
  }

  // Exponential moving average, debiased as TensorBoard's: over the series' own points. A
  // series of fewer than MIN_SMOOTH points is drawn as it is (its average would mislead).
  const MIN_SMOOTH = 10;
  // It starts again after each gap (a slot's next seed is another seed).
  function smoothed(ys, w, gaps) {
    if (w <= 0 || ys.length < MIN_SMOOTH) return ys.slice();
    const restart = new Set(gaps.map((g) => g[0]));
    const out = new Array(ys.length);
    let last = 0, n = 0;
    for (let i = 0; i < ys.length; i++) {
      if (restart.has(i)) { last = 0; n = 0; }
      const y = ys[i];
      if (y === null) { out[i] = null; continue; }
      n += 1;
      last = last * w + (1 - w) * y;
      out[i] = last / (1 - Math.pow(w, n));
    }
    return out;
  }

  // uPlot draws series over one shared x array: the union of the series' x values. Where a
  // series has no point at an x it holds undefined, which uPlot's line spans; null breaks the
  // line: a non-finite value (NaN, +-Inf: the record's own gap) and a series' own gaps.
  function aligned(chart) {
    const gx = (g) => (state.x === "p" ? g[2] : g[1]);
    const xs = Array.from(new Set(chart.series.flatMap((s) => [...s[state.x], ...s.gaps.map(gx)])))
      .sort((a, b) => a - b);
    const at = new Map(xs.map((x, i) => [x, i]));
    const data = [xs];
    for (const s of chart.series) {
      const ys = chart.log ? s.y.map((y) => (y !== null && y > 0 ? y : null)) : s.y;
      const sm = smoothed(ys, state.smooth, s.gaps);
      const raw = new Array(xs.length);
      const smo = new Array(xs.length);
      for (const g of s.gaps) { const j = at.get(gx(g)); raw[j] = null; smo[j] = null; }
      s[state.x].forEach((x, i) => { const j = at.get(x); raw[j] = ys[i]; smo[j] = sm[i]; });
      data.push(raw, smo);
    }
    return data;
  }

  // A log axis keeps its decades only (every minor tick's line would hide the curves).
  function decades(u, splits) {
    return splits.map((v) => (v > 0 && Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-9
      ? v : null));
  }

  function xValue(item, which) {
    return state.x === "p" ? item["p" + (which || "")] : item["t" + (which || "")];
  }

  function marksPlugin(chart) {
    const record = report.charts[chart.id];
    return {
      hooks: {
        draw: [(u) => {
          const ctx = u.ctx, top = u.bbox.top, height = u.bbox.height;
          const lo = u.scales.x.min, hi = u.scales.x.max;
          ctx.save();
          for (const b of D.bands) {
            const x0 = Math.max(xValue(b, "0"), lo), x1 = Math.min(xValue(b, "1"), hi);
            if (x1 < x0) continue;
            const p0 = u.valToPos(x0, "x", true), p1 = u.valToPos(x1, "x", true);
            ctx.fillStyle = BAND_COLOURS[b.kind] || BAND_COLOURS.alert;
            ctx.fillRect(p0, top, Math.max(2, p1 - p0), height);
          }
          const drawn = [];
          ctx.setLineDash([4, 3]);
          ctx.lineWidth = 1.5 * devicePixelRatio;
          for (const m of D.markers) {
            const x = xValue(m);
            if (x < lo || x > hi) continue;
            const px = u.valToPos(x, "x", true);
            ctx.strokeStyle = MARK_COLOURS[m.kind] || "#000";
            ctx.beginPath(); ctx.moveTo(px, top); ctx.lineTo(px, top + height); ctx.stroke();
            drawn.push({ kind: m.kind, x: x, run: m.run, batch: m.batch, epoch: m.epoch, env: m.env });
          }
          ctx.restore();
          record.markers = drawn;
        }],
      },
    };
  }

  // The x range of every chart: the whole of the longest run, so that charts line up and
  // every marker has its place on each.
  function xRange() {
    return [0, Math.max(...D.runs.map((r) => (state.x === "p" ? r.last_p : r.last_t)), 1e-9)];
  }

  // Tick labels with as many digits as their spacing needs (a range of 1e-5 around -0.009
  // must not print -0.009 five times).
  function ticks(u, splits) {
    if (splits.length < 2) return splits.map((v) => String(v));
    const step = Math.abs(splits[1] - splits[0]) || Math.abs(splits[0]) || 1;
    const digits = Math.max(0, Math.min(12, -Math.floor(Math.log10(step)) + 1));
    return splits.map((v) => {
      if (v === null) return "";
      const a = Math.abs(v);
      if (a !== 0 && (a >= 1e6 || a < 1e-4)) return v.toExponential(2);
      return Number(v.toFixed(digits)).toString();
    });
  }

  function axisLabel() {
    return state.x === "p" ? "training progress (batches; epoch e of a batch at +e/max_epochs)"
      : "wall time since the run's start (s)";
  }

  function build(fig, chart) {
    const box = fig.querySelector(".plot");
    box.textContent = "";
    const series = [{ label: state.x === "p" ? "batch" : "s" }];
    chart.series.forEach((s, i) => {
      const c = colour(chart, s, i);
      const label = (manyRuns ? D.runs[s.run].id + " · " : "") + s.label;
      series.push({ label: label + " (raw)", stroke: fade(c, 0.28), width: 1,
        points: { show: false } });
      series.push({ label: label, stroke: c, width: 1.6 });
    });
    report.charts[chart.id] = { title: chart.title, series: chart.series.map((s) => ({
      label: s.label, run: s.run, points: s.y.length, total: s.total, thinned: s.thinned })),
      markers: [] };
    const opts = {
      width: Math.max(320, box.clientWidth || 600), height: 230, series: series,
      scales: { x: { time: false, range: () => xRange() }, y: chart.log ? { distr: 3 } : {} },
      axes: [{ label: axisLabel(), labelSize: 18, values: ticks },
        chart.log ? { label: chart.unit, size: 64, filter: decades, grid: { filter: decades },
          ticks: { filter: decades } }
          : { label: chart.unit, size: 64, values: ticks }],
      legend: { live: true }, plugins: [marksPlugin(chart)],
    };
    const u = new uPlot(opts, aligned(chart), box);
    // The raw curves stay out of the legend: only their smoothed partners are named.
    u.root.querySelectorAll(".u-legend .u-series").forEach((row, i) => {
      if (i > 0 && i % 2 === 1) row.style.display = "none";
    });
    report.charts[chart.id].drawnPoints = chart.series.map((_, i) =>
      u.data[2 * i + 1].filter((v) => v !== null && v !== undefined).length);
    plots.push({ u: u, chart: chart, fig: fig });
  }

  function drawCharts() {
    plots.length = 0;
    for (const chart of D.charts) {
      const fig = document.querySelector(`figure[data-chart="${chart.id}"]`);
      if (fig) build(fig, chart);
    }
  }

  function resmooth() {
    for (const p of plots) p.u.setData(aligned(p.chart), false);
  }

  // The chart as a PNG (its title above the canvas): a data URL, which the button saves.
  function pngData(id) {
    const p = plots.find((q) => q.chart.id === id);
    if (!p) return null;
    const src = p.u.ctx.canvas, pad = 28 * devicePixelRatio;
    const out = document.createElement("canvas");
    out.width = src.width; out.height = src.height + pad;
    const ctx = out.getContext("2d");
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, out.width, out.height);
    ctx.fillStyle = "#111"; ctx.font = `${14 * devicePixelRatio}px sans-serif`;
    ctx.fillText(p.chart.title, 8 * devicePixelRatio, 19 * devicePixelRatio);
    ctx.drawImage(src, 0, pad);
    return out.toDataURL("image/png");
  }
  report.png = pngData;

  function png(id) {
    const url = pngData(id);
    if (!url) return;
    const a = document.createElement("a");
    a.download = `${id}.png`; a.href = url;
    document.body.appendChild(a); a.click(); a.remove();
  }

  // -- the seeds' timeline -------------------------------------------------------------------
  const SVG = "http://www.w3.org/2000/svg";
  function el(name, attrs, parent) {
    const n = document.createElementNS(SVG, name);
    for (const k in attrs) n.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(n);
    return n;
  }

  function niceStep(raw) {
    const p = Math.pow(10, Math.floor(Math.log10(raw || 1)));
    const f = raw / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
  }

  function drawTimeline() {
    const host = document.getElementById("timeline");
    host.textContent = "";
    const legend = document.getElementById("stage-legend");
    legend.textContent = "";
    const present = new Set(D.seeds.flatMap((s) => s.stages.map((st) => st[0])));
    for (const stage in STAGE_COLOURS) {
      if (!present.has(stage)) continue;
      const item = document.createElement("span");
      item.innerHTML = `<i style="background:${STAGE_COLOURS[stage]}"></i>`;
      item.appendChild(document.createTextNode(stage.toLowerCase()));
      legend.appendChild(item);
    }
    const ends = document.createElement("span");
    ends.textContent = "▲ fossilized  ✕ culled  | alive when its episode ended  ▸ alive at the " +
      "record's end";
    legend.appendChild(ends);
    D.runs.forEach((run, r) => {
      const seeds = D.seeds.filter((s) => s.run === r);
      const lanes = run.lanes;
      const wrap = document.createElement("div");
      wrap.className = "timeline-run";
      if (manyRuns) {
        const h = document.createElement("h3"); h.textContent = run.id; wrap.appendChild(h);
      }
      host.appendChild(wrap);
      if (!lanes.length) {
        const p = document.createElement("p"); p.className = "muted";
        p.textContent = "No seed germinated in this run."; wrap.appendChild(p);
        report.timeline[r] = { lanes: 0, seeds: 0, stages: 0 };
        return;
      }
      const left = 130, lane = 16, width = Math.max(480, host.clientWidth - 4);
      const end = xRange()[1];
      const scale = (v) => left + (width - left - 12) * (end > 0 ? v / end : 0);
      const svg = el("svg", { width: width, height: lanes.length * lane + 26, class: "timeline" }, wrap);
      lanes.forEach((name, i) => {
        if (i % 2 === 0) el("rect", { x: 0, y: i * lane, width: width, height: lane, fill: "#f6f6f6" }, svg);
        const t = el("text", { x: 4, y: i * lane + 12, class: "lane" }, svg); t.textContent = name;
      });
      const row = new Map(lanes.map((n, i) => [n, i]));
      let stages = 0;
      for (const s of seeds) {
        const y = row.get(s.lane) * lane + 2;
        for (const st of s.stages) {
          const [stage, t0, t1, p0, p1, alpha, gates] = st;
          const a = state.x === "p" ? p0 : t0, b = state.x === "p" ? p1 : t1;
          const x0 = scale(a), x1 = Math.max(scale(b), x0 + 1.5);
          const rect = el("rect", { x: x0, y: y, width: x1 - x0, height: lane - 4,
            fill: STAGE_COLOURS[stage] || "#ccc", class: "stage", "data-seed": s.id }, svg);
          const tip = el("title", {}, rect);
          tip.textContent = `${s.id} (${s.bp}) in ${s.lane}\n${stage}` +
            (alpha === null ? "" : `, alpha ${alpha.toFixed(2)}`) +
            `\nfrom ${a} to ${b} ${state.x === "p" ? "batches" : "s"}` +
            (gates.length ? "\n" + gates.join("\n") : "\nno gate evaluated in this stage") +
            `\nended: ${s.outcome.replace("_", " ")}${s.reason ? " (" + s.reason + ")" : ""}`;
          stages += 1;
        }
        const last = s.stages[s.stages.length - 1];
        const xe = scale(state.x === "p" ? last[4] : last[2]);
        const glyph = { fossilized: "▲", culled: "✕", episode_end: "|" }[s.outcome] || "▸";
        const mark = el("text", { x: xe + 1, y: y + 10, class: "end " + s.outcome }, svg);
        mark.textContent = glyph;
        el("title", {}, mark).textContent = `${s.id}: ${s.outcome}${s.reason ? " (" + s.reason + ")" : ""}`;
      }
      const bottom = lanes.length * lane;
      const step = niceStep(end / 8);
      for (let v = 0; v <= end + 1e-9; v += step) {
        const x = scale(v);
        el("line", { x1: x, x2: x, y1: 0, y2: bottom + 4, class: "grid" }, svg);
        const t = el("text", { x: x, y: bottom + 16, class: "axis", "text-anchor": "middle" }, svg);
        t.textContent = Number(v.toFixed(6)).toString();
      }
      const unit = el("text", { x: 4, y: bottom + 16, class: "axis" }, svg);
      unit.textContent = state.x === "p" ? "batches" : "seconds";
      for (const m of D.markers) {
        if (m.run !== r) continue;
        const x = scale(state.x === "p" ? m.p : m.t);
        const line = el("line", { x1: x, x2: x, y1: 0, y2: bottom, class: "mark",
          stroke: MARK_COLOURS[m.kind] || "#000" }, svg);
        el("title", {}, line).textContent = `${m.what} (env ${m.env}, epoch ${m.epoch})`;
      }
      report.timeline[r] = { lanes: lanes.length, seeds: seeds.length, stages: stages };
    });
  }

  function drawAll() {
    drawCharts();
    drawTimeline();
  }

  document.getElementById("xmode").addEventListener("change", (e) => {
    state.x = e.target.value; drawAll();
  });
  const slider = document.getElementById("smooth");
  slider.addEventListener("input", (e) => {
    state.smooth = Number(e.target.value);
    document.getElementById("smooth-value").textContent = state.smooth.toFixed(2);
    resmooth();
  });
  state.smooth = Number(slider.value);
  document.addEventListener("click", (e) => {
    const b = e.target.closest("button.png");
    if (b) png(b.dataset.chart);
  });
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(drawAll, 150);
  });
  const started = performance.now();
  drawAll();
  report.renderMs = performance.now() - started;
  report.readyMs = performance.now();  // since navigation started: parse, scripts and drawing
  report.ready = true;
})();
