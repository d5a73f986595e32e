// The page's plots of `/api/history`: a few lines of SVG per chart, drawn by hand (the page
// loads nothing from elsewhere). Each chart spans the whole window the proxy keeps, so a
// quiet stretch shows as a flat line rather than a rescaled axis. Loaded before
// dashboard.js, which calls drawHistory on every poll.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const byId = (id) => document.getElementById(id);
const CHART_W = 300;
const CHART_H = 80;

const CHARTS = [
  { id: "statements", title: "Statements / s", series: [["statements_per_sec", "statements"]] },
  { id: "rows", title: "Dual-write rows / s", series: [["mirrored_rows_per_sec", "mirrored"], ["queued_rows_per_sec", "queued"]] },
  { id: "backlog", title: "Retry backlog (rows)", series: [["retry_backlog", "backlog"]] },
  // A shadow comparison finishes only now and then: join the points across the gaps.
  { id: "match", title: "Shadow match rate", series: [["match_rate", "match rate"]], max: 1, join: true, percent: true },
  { id: "backfill", title: "Backfill rows / s", series: [["backfill_rows_per_sec", "backfill"]] },
];

function svgEl(name, attrs) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

// The next round number at or above x (1, 2, 5 × 10^n), so the axis reads at a glance.
function niceMax(x) {
  if (!(x > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(x)));
  for (const m of [1, 2, 5, 10]) if (x <= m * p) return m * p;
  return 10 * p;
}

function shortNum(x) {
  if (x === null || x === undefined) return "–";
  if (x >= 1e6) return (x / 1e6).toFixed(x >= 1e7 ? 0 : 1) + "M";
  if (x >= 1e4) return (x / 1e3).toFixed(0) + "k";
  return x >= 10 || x === 0 ? Math.round(x).toLocaleString("en") : x.toFixed(1);
}

function chartValue(spec, x) {
  if (x === null || x === undefined) return "–";
  return spec.percent ? (100 * x).toFixed(x >= 0.9995 ? 0 : 1) + " %" : shortNum(x);
}

// One path's `d`: a move at the start of every run of values, a line to each next one.
function pathData(t, values, x, y, join) {
  let d = "";
  let pen = false;
  let points = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === null || v === undefined) {
      if (!join) pen = false;
      continue;
    }
    d += `${pen ? "L" : "M"}${x(t[i]).toFixed(1)} ${y(v).toFixed(1)}`;
    pen = true;
    points++;
  }
  return { d, points };
}

function buildChart(spec) {
  const fig = document.createElement("figure");
  fig.className = "chart";
  fig.id = `chart-${spec.id}`;
  const cap = document.createElement("figcaption");
  const title = document.createElement("span");
  title.textContent = spec.title;
  const now = document.createElement("span");
  now.className = "now";
  cap.append(title, now);
  const svg = svgEl("svg", { viewBox: `0 0 ${CHART_W} ${CHART_H}`, preserveAspectRatio: "none", role: "img" });
  svg.appendChild(svgEl("g", { class: "marks" }));
  spec.series.forEach((_, i) => svg.appendChild(svgEl("path", { class: `line s${i}`, d: "" })));
  const axis = document.createElement("div");
  axis.className = "axis muted";
  const left = document.createElement("span");
  const max = document.createElement("span");
  const right = document.createElement("span");
  right.textContent = "now";
  axis.append(left, max, right);
  fig.append(cap, svg, axis);
  return fig;
}

function drawChart(fig, spec, h, x, marks) {
  const all = spec.series.flatMap(([key]) => h[key] || []).filter((v) => v !== null && v !== undefined);
  const max = spec.max || niceMax(Math.max(0, ...all));
  const y = (v) => CHART_H - 2 - (Math.min(v, max) / max) * (CHART_H - 4);
  const svg = fig.querySelector("svg");
  const paths = svg.querySelectorAll("path.line");
  let drawn = 0;
  const nows = [];
  spec.series.forEach(([key, label], i) => {
    const values = h[key] || [];
    const p = pathData(h.t, values, x, y, spec.join);
    paths[i].setAttribute("d", p.d);
    if (p.points >= 2) drawn++;
    const last = values.length > 0 ? values[values.length - 1] : null;
    nows.push(spec.series.length > 1 ? `${label} ${chartValue(spec, last)}` : chartValue(spec, last));
  });
  // Phase changes as thin vertical lines, so a change in rate can be read against a flip.
  const g = svg.querySelector("g.marks");
  g.replaceChildren();
  for (const m of marks) {
    const line = svgEl("line", { class: "phase-mark", x1: m.x, x2: m.x, y1: 0, y2: CHART_H });
    const tip = svgEl("title");
    tip.textContent = m.label;
    line.appendChild(tip);
    g.appendChild(line);
  }
  fig.querySelector(".now").textContent = nows.join(" · ");
  fig.querySelector(".axis span:nth-child(2)").textContent = `max ${chartValue(spec, max)}`;
  fig.dataset.drawn = drawn > 0 ? "true" : "false";
  fig.dataset.max = String(Math.max(0, ...all));
}

const PHASE_ORDER = ["shadow", "canary", "reads-new", "writes-new", "done"];

function clock(ms) {
  return new Date(ms).toLocaleTimeString("en-GB");
}

// The cutover's phases as bands across the window, and the changes as a list.
function drawPhases(h, start, end, x) {
  const svg = byId("phase-strip");
  svg.replaceChildren();
  const phases = h.phases || [];
  phases.forEach((p, i) => {
    const from = Math.max(p.at_unix_ms, start);
    const to = i + 1 < phases.length ? phases[i + 1].at_unix_ms : end;
    if (to <= start || from >= end) return;
    const idx = PHASE_ORDER.indexOf(p.to);
    const rect = svgEl("rect", { class: `phase p${idx < 0 ? 0 : idx}`, x: x(from), y: 0, width: Math.max(0.5, x(to) - x(from)), height: 20 });
    const tip = svgEl("title");
    tip.textContent = `${p.to} (epoch ${p.epoch}) from ${clock(p.at_unix_ms)}`;
    rect.appendChild(tip);
    svg.appendChild(rect);
  });
  const list = byId("phase-changes");
  list.replaceChildren();
  for (const p of phases.slice(-8).reverse()) {
    const li = document.createElement("li");
    li.textContent = p.from === null
      ? `${clock(p.at_unix_ms)} · ${p.to} (epoch ${p.epoch}) when sampling started`
      : `${clock(p.at_unix_ms)} · ${p.from} → ${p.to} (epoch ${p.epoch})`;
    list.appendChild(li);
  }
}

function drawHistory(h) {
  const box = byId("charts");
  if (box.children.length === 0) for (const spec of CHARTS) box.appendChild(buildChart(spec));
  if (!h) {
    byId("history-note").textContent = "(history unavailable)";
    return;
  }
  // The window grows with the samples up to what the proxy keeps, and is never under a
  // minute: a young proxy's first seconds are not squeezed against the right edge.
  const kept = h.capacity * h.interval_secs * 1000;
  const end = h.t.length > 0 ? h.t[h.t.length - 1] : Date.now();
  const span = Math.min(kept, Math.max(60000, h.t.length > 0 ? end - h.t[0] : 0));
  const start = end - span;
  const x = (t) => ((t - start) / span) * CHART_W;
  byId("history-note").textContent = h.t.length < 2
    ? "(collecting: one sample a second)"
    : `(one sample a second, the last ${Math.round(kept / 60000)} minutes kept)`;
  const ago = span >= 120000 ? `−${Math.round(span / 60000)} min` : `−${Math.round(span / 1000)} s`;
  const marks = (h.phases || [])
    .filter((p) => p.from !== null && p.at_unix_ms >= start)
    .map((p) => ({ x: x(p.at_unix_ms), label: `${p.from} → ${p.to} at ${clock(p.at_unix_ms)}` }));
  CHARTS.forEach((spec, i) => {
    const fig = box.children[i];
    drawChart(fig, spec, h, x, marks);
    fig.querySelector(".axis span:first-child").textContent = ago;
  });
  drawPhases(h, start, end, x);
}
