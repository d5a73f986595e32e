// The live page: polls the admin API every two seconds and redraws (the plots are charts.js). Values from the API are
// only ever set as text (never as HTML): query texts and sample values come from clients.
"use strict";

const POLL_MS = 2000;
let lastStatements = null;

const $ = (id) => document.getElementById(id);
const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en"));
const pct = (x) => (x === null ? "–" : (100 * x).toFixed(x >= 0.9995 || x === 0 ? 0 : 2) + " %");

function setText(id, text, cls) {
  const el = $(id);
  el.textContent = text;
  el.classList.remove("ok", "warn", "bad");
  if (cls) el.classList.add(cls);
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fillTable(id, rows, render, emptyText) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = body.insertRow();
    const td = cell(tr, emptyText || "none", "muted");
    td.colSpan = $(id).querySelectorAll("th").length;
    return;
  }
  for (const r of rows) render(body.insertRow(), r);
}

async function getJson(path) {
  const res = await fetch(path, { cache: "no-store" });
  if (res.status === 404) return null;
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return res.json();
}

// Sum of a counter over all its label sets, from Prometheus text.
function counterSum(text, name) {
  let sum = 0;
  let seen = false;
  for (const line of text.split("\n")) {
    if (line.startsWith(name + "{") || line.startsWith(name + " ")) {
      const v = Number(line.slice(line.lastIndexOf(" ") + 1));
      if (!Number.isNaN(v)) { sum += v; seen = true; }
    }
  }
  return seen ? sum : null;
}

function drawBackend(prefix, b) {
  if (!b || b.reachable === null || b.reachable === undefined) {
    setText(prefix + "-up", "unknown");
  } else if (b.reachable) {
    setText(prefix + "-up", "up", "ok");
  } else {
    setText(prefix + "-up", "down", "bad");
  }
  const parts = [b ? b.url : ""];
  if (b && b.connect_ms !== null && b.connect_ms !== undefined) parts.push(`connect ${b.connect_ms.toFixed(1)} ms`);
  if (b && b.last_error) parts.push(b.last_error);
  $(prefix + "-note").textContent = parts.join(" · ");
}

function drawMirror(m) {
  if (!m) {
    for (const id of ["rows-mirrored", "rows-queued", "backlog", "in-doubt", "retry-backend"]) setText(id, "off");
    fillTable("secondary-errors", [], null, "dual writes are off");
    fillTable("statement-mode", [], null, "dual writes are off");
    return;
  }
  setText("rows-mirrored", fmt(m.rows_mirrored));
  setText("rows-queued", fmt(m.rows_queued), m.rows_queued > 0 ? "warn" : null);
  setText("backlog", fmt(m.retry_backlog), m.retry_backlog > 0 ? "warn" : "ok");
  $("backlog-note").textContent = m.retry_backlog > 0 ? `oldest ${fmt(m.retry_oldest_secs)} s` : "";
  setText("in-doubt", fmt(m.in_doubt), m.in_doubt > 0 ? "warn" : null);
  const r = m.retry_log || {};
  setText("retry-backend", r.backend || "embedded");
  const notes = [`table ${fmt(r.records_embedded)}`];
  if (r.backend === "kafka") {
    notes.push(`kafka ${fmt(r.records_kafka)}`, `fallback ${fmt(r.records_fallback)}`);
    if (r.kafka_last_error) notes.push(`last error: ${r.kafka_last_error}`);
  }
  if (r.commits_refused) notes.push(`commits refused ${fmt(r.commits_refused)}`);
  // In writes-new the counts are those of new's dual writes onto old.
  if (m.direction === "new-to-old") notes.push("new is the primary, old follows");
  $("retry-note").textContent = notes.join(" · ");
  const errors = Object.entries(m.secondary_errors || {}).sort((a, b) => b[1] - a[1]);
  fillTable("secondary-errors", errors, (tr, [state, n]) => {
    cell(tr, state);
    cell(tr, fmt(n), "num");
  });
  const modes = Object.values(m.statement_mode || {}).sort((a, b) => b.count - a.count).slice(0, 20);
  fillTable("statement-mode", modes, (tr, e) => {
    cell(tr, e.reason);
    cell(tr, e.mirrored ? "yes" : "no", e.mirrored ? null : "warn");
    cell(tr, fmt(e.count), "num");
    const td = cell(tr, "");
    const code = document.createElement("code");
    code.textContent = e.example;
    td.appendChild(code);
  });
}

function matchRate(c) {
  // An accepted difference (a collation the operator judged harmless) counts as agreeing.
  const accepted = c.accepted || 0;
  const compared = c.matched + c.confirmed + c.transient + accepted;
  return compared > 0 ? (c.matched + c.transient + accepted) / compared : null;
}

function drawShadow(s) {
  if (!s) {
    for (const id of ["match-rate", "confirmed", "transient", "dropped"]) setText(id, "off");
    $("match-note").textContent = "shadow reads are off (--shadow-sample-rate)";
    fillTable("fingerprints", [], null, "shadow reads are off");
    return;
  }
  const t = s.totals;
  const rate = matchRate(t);
  setText("match-rate", pct(rate), rate === null ? null : t.confirmed > 0 ? "bad" : "ok");
  $("match-note").textContent = `${fmt(t.sampled)} sampled at ${(100 * s.sample_rate).toFixed(1)} %`;
  setText("confirmed", fmt(t.confirmed), t.confirmed > 0 ? "bad" : "ok");
  setText("transient", fmt(t.transient));
  setText("dropped", fmt(s.queue ? s.queue.dropped : null), s.queue && s.queue.dropped > 0 ? "warn" : null);
  const fps = Object.entries(s.fingerprints || {})
    .map(([fp, f]) => [fp, f])
    .sort((a, b) => b[1].confirmed - a[1].confirmed || b[1].sampled - a[1].sampled)
    .slice(0, 15);
  fillTable("fingerprints", fps, (tr, [fp, c]) => {
    cell(tr, fp);
    const q = cell(tr, "");
    const code = document.createElement("code");
    code.textContent = c.query || "";
    q.appendChild(code);
    for (const k of ["sampled", "matched", "confirmed", "accepted", "transient", "errors", "skipped"]) {
      cell(tr, fmt(c[k] || 0), k === "confirmed" && c[k] > 0 ? "num bad" : "num");
    }
    const r = matchRate(c);
    cell(tr, pct(r), "num");
  });
}

function rowsTable(columns, rows, emptyText, cls) {
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const c of columns) {
    const th = document.createElement("th");
    th.textContent = c.name;
    head.appendChild(th);
  }
  const body = table.createTBody();
  if (rows.length === 0) {
    const td = cell(body.insertRow(), emptyText, "muted");
    td.colSpan = Math.max(1, columns.length);
  }
  for (const row of rows) {
    const tr = body.insertRow();
    for (const v of row) cell(tr, v === null ? "NULL" : v, cls);
  }
  return table;
}

function sideTable(title, side) {
  const wrap = document.createElement("div");
  const h = document.createElement("h3");
  h.textContent = `${title}: ${fmt(side.rows)} rows`;
  wrap.appendChild(h);
  if ((side.sort_collations || []).length > 0) {
    const p = document.createElement("p");
    p.textContent = `sorted under ${side.sort_collations.join("; ")}`;
    wrap.appendChild(p);
  }
  if ((side.first_rows || []).length > 0) {
    // An order or collation difference: the first rows as this side ordered them.
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "first rows, in this side's order";
    wrap.appendChild(p);
    wrap.appendChild(rowsTable(side.columns || [], side.first_rows, "none"));
  }
  wrap.appendChild(rowsTable(side.columns || [], side.only_here || [], "no rows only here", "only"));
  return wrap;
}

function drawCollation(view) {
  const shapes = view ? view.collation || [] : [];
  fillTable("collation", shapes, (tr, c) => {
    cell(tr, c.fingerprint);
    const q = cell(tr, "");
    const code = document.createElement("code");
    code.textContent = c.query || "(not sampled yet)";
    q.appendChild(code);
    cell(tr, fmt(c.confirmed), c.confirmed > 0 ? "num bad" : "num");
    cell(tr, fmt(c.accepted), "num");
    if (c.accepted_by_setting) cell(tr, "accepted (shadow.accept_collation)", "ok");
    else cell(tr, "confirmed mismatch: accept once understood", "bad");
  }, view ? "no text sort differs" : "shadow reads are off");
}

function drawSamples(view) {
  const box = $("samples");
  box.replaceChildren();
  if (!view) {
    $("redaction").textContent = "";
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "shadow reads are off";
    box.appendChild(p);
    return;
  }
  $("redaction").textContent = view.redacted ? "(values shown as keyed hashes)" : "(raw values: redact = false)";
  if (view.samples.length === 0) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "no confirmed mismatch";
    box.appendChild(p);
    return;
  }
  for (const s of view.samples.slice(0, 10)) {
    const div = document.createElement("div");
    div.className = "sample";
    div.dataset.fingerprint = s.fingerprint;
    const h = document.createElement("h3");
    h.textContent = `${new Date(s.at_unix_ms).toISOString()} · ${s.kind} · ${s.difference} · fingerprint ${s.fingerprint}`;
    div.appendChild(h);
    const q = document.createElement("pre");
    q.textContent = s.query;
    div.appendChild(q);
    if (s.difference === "collation") {
      const p = document.createElement("p");
      p.className = "bad";
      p.textContent = "The databases sort text differently: same rows in another order, or other rows " +
        "under the LIMIT. Clients paging through this query will see other rows after the cutover. " +
        `Once understood: shadow.accept_collation = ["${s.fingerprint}"].`;
      div.appendChild(p);
    }
    const diff = document.createElement("div");
    diff.className = "diff";
    diff.appendChild(sideTable("old", s.old));
    diff.appendChild(sideTable(s.kind === "baseline" ? "old (again)" : "new", s.other));
    div.appendChild(diff);
    if (!s.rows_listed) {
      const p = document.createElement("p");
      p.className = "muted";
      p.textContent = "results larger than the rows tracked: the digests differ, the rows are not named";
      div.appendChild(p);
    }
    box.appendChild(div);
  }
}

function drawProgress(progress) {
  const box = $("progress");
  box.replaceChildren();
  const jobs = progress || [];
  if (jobs.length === 0) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "No backfill or verify progress reported.";
    box.appendChild(p);
    return;
  }
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const t of ["job", "table", "done", "total", "rows", "state"]) {
    const th = document.createElement("th");
    th.textContent = t;
    head.appendChild(th);
  }
  const body = table.createTBody();
  for (const j of jobs) {
    const tr = body.insertRow();
    cell(tr, j.job);
    cell(tr, j.table);
    cell(tr, fmt(j.done), "num");
    cell(tr, fmt(j.total), "num");
    cell(tr, fmt(j.rows), "num");
    cell(tr, j.state || "", j.failed ? "bad" : null);
  }
  box.appendChild(table);
}

const PHASE_NOTES = {
  "shadow": "reads and writes on old; new follows",
  "canary": "a share of sessions read from new; writes on old",
  "reads-new": "autocommit reads from new; writes on old, new follows",
  "writes-new": "writes on new; old follows",
  "done": "old detached",
};

// Reads moved to a cold new go to disk: new's ratio well under old's says warm it up first
// (switchyard-proxy cutover warm-up).
function drawCache(r) {
  const ratio = (x) => (x === null || x === undefined ? null : x);
  const oldR = ratio(r.old), newR = ratio(r.new);
  setText("cache-old", pct(oldR));
  const cold = oldR !== null && newR !== null && newR < oldR - 0.05;
  setText("cache-new", pct(newR), cold ? "warn" : null);
  $("cache-note").textContent = r.error ? r.error : cold ? "colder than old: see cutover warm-up" : "since statistics reset";
}

function drawCutover(c) {
  if (!c) return;
  setText("phase", c.phase, c.control_table_ok ? null : "bad");
  let note = PHASE_NOTES[c.phase] || "";
  if (c.phase === "canary") note = `${c.percent} % of sessions read from new; writes on old`;
  $("phase-note").textContent = `epoch ${c.epoch} · ${note}`;
  const parts = [`This instance runs epoch ${c.epoch} (${c.phase}).`];
  if (c.converged === false) parts.push("Not every live instance runs it yet.");
  if (c.converged === true) parts.push("Every live instance runs it.");
  if (c.primary) parts.push(`Sessions write to ${c.primary}.`);
  if (c.write_pause) parts.push(`A write flip holds new transactions (${c.sessions_busy} session(s) still busy).`);
  if (c.sessions_pinned > 0) parts.push(`${c.sessions_pinned} session(s) hold temporary tables or session advisory locks: writes cannot move until they end.`);
  if (!c.control_table_ok) parts.push("The control table is out of reach: this instance takes no writes.");
  if (c.error) parts.push(`Control table: ${c.error}`);
  if ((c.sent_back || []).length > 0) parts.push(`${c.sent_back.length} query shape(s) sent back to old after a confirmed mismatch.`);
  $("cutover-note").textContent = parts.join(" ");
  drawCache(c.cache_hit_ratio || {});
  fillTable("cutover-instances", c.instances || [], (tr, i) => {
    cell(tr, i.id);
    cell(tr, i.phase);
    cell(tr, fmt(i.epoch), i.epoch === c.epoch ? "num" : "num warn");
    cell(tr, i.ready_epoch === null ? "" : fmt(i.ready_epoch), "num");
    cell(tr, `${i.last_seen_secs.toFixed(1)} s ago`, i.live ? null : "bad");
  }, "no instance registered");
  const next = c.next || null;
  $("checklist-title").textContent = next ? `Checklist for ${next.to}` : "Checklist for the next phase";
  fillTable("cutover-checklist", next ? next.checks : [], (tr, k) => {
    cell(tr, k.name);
    cell(tr, k.ok ? "ok" : "fails", k.ok ? "ok" : "bad");
    cell(tr, k.detail);
  }, c.phase === "done" ? "the cutover is done" : "not known (control table out of reach)");
  fillTable("cutover-sent-back", c.sent_back || [], (tr, b) => {
    cell(tr, b.fingerprint);
    cell(tr, b.query, "bad");
  }, "none: every shape reads where the phase says");
  fillTable("cutover-history", c.history || [], (tr, h) => {
    cell(tr, h.at);
    cell(tr, `${h.from} → ${h.to}${h.to === "canary" ? ` ${h.percent} %` : ""}`);
    cell(tr, fmt(h.epoch), "num");
    cell(tr, h.by);
    const td = cell(tr, h.detail ? `${h.outcome}: ${h.detail}` : h.outcome, h.outcome === "flipped" ? "ok" : "warn");
    td.title = h.detail || "";
    cell(tr, `${fmt(h.wait_ms)} ms`, "num");
  }, "no flip yet");
}

function verdict(status, shadow) {
  const el = $("verdict");
  const problems = [];
  const m = status.mirror;
  if (status.backends.new.reachable === false) problems.push(["bad", "new database down"]);
  if (status.backends.old.reachable === false) problems.push(["bad", "old database down"]);
  if (shadow && shadow.totals.confirmed > 0) problems.push(["bad", "confirmed mismatches"]);
  if (m && m.retry_backlog > 0) problems.push(["warn", "retry backlog"]);
  if (m && m.in_doubt > 0) problems.push(["warn", "in-doubt transactions"]);
  const c = status.cutover;
  if (c && !c.control_table_ok) problems.push(["bad", "cutover control table out of reach"]);
  if (c && (c.sent_back || []).length > 0) problems.push(["warn", "query shapes sent back to old"]);
  if (c && c.converged === false) problems.push(["warn", "instances on different epochs"]);
  el.classList.remove("ok", "warn", "bad");
  if (problems.length === 0) {
    el.textContent = "old and new agree";
    el.classList.add("ok");
  } else {
    el.textContent = problems.map((p) => p[1]).join(", ");
    el.classList.add(problems.some((p) => p[0] === "bad") ? "bad" : "warn");
  }
}

async function poll() {
  try {
    const [status, mismatches, metrics, history] = await Promise.all([
      getJson("/api/status"),
      getJson("/api/mismatches"),
      fetch("/metrics", { cache: "no-store" }).then((r) => (r.ok ? r.text() : "")),
      // The plots are extra: without them the rest of the page still draws.
      getJson("/api/history").catch(() => null),
    ]);
    $("instance").textContent = `${status.instance_id} · v${status.version} · up ${fmt(status.uptime_secs)} s`;
    drawCutover(status.cutover);
    setText("sessions", fmt(status.sessions.active));
    $("sessions-note").textContent = `${fmt(status.sessions.total)} since start, max ${fmt(status.sessions.max)}`;
    const total = counterSum(metrics, "switchyard_statements_total");
    const now = Date.now();
    const recent = history && history.statements_per_sec.length > 0
      ? history.statements_per_sec[history.statements_per_sec.length - 1] : null;
    if (recent !== null) {
      // This proxy's own rate over the last second (the Prometheus counter is per process).
      setText("sps", recent.toFixed(recent < 10 ? 1 : 0));
    } else if (total !== null && lastStatements) {
      const rate = (total - lastStatements.total) / ((now - lastStatements.at) / 1000);
      setText("sps", rate >= 0 ? rate.toFixed(rate < 10 ? 1 : 0) : "–");
    }
    if (total !== null) {
      lastStatements = { total, at: now };
      $("sps-note").textContent = `${fmt(total)} since start`;
    }
    drawBackend("old", status.backends.old);
    drawBackend("new", status.backends.new);
    drawMirror(status.mirror);
    drawShadow(status.shadow);
    drawSamples(mismatches);
    drawCollation(mismatches);
    drawProgress(status.progress);
    drawHistory(history);
    verdict(status, status.shadow);
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    const el = $("verdict");
    el.classList.remove("ok", "warn");
    el.classList.add("bad");
    el.textContent = `proxy unreachable: ${e.message}`;
  }
}

poll();
setInterval(poll, POLL_MS);
