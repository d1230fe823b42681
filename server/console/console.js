// The engine serve console: pipelines, their DAG and history, a run live.
// Every value from data or logs goes into the page as text (textContent),
// never as markup. Mutating calls carry the API token from this tab's
// sessionStorage in an Authorization header (a cross-site page cannot set
// it without a CORS preflight the API never grants).
"use strict";

const main = () => document.getElementById("main");
const TOKEN_KEY = "engine-api-token";
let closers = []; // EventSources of the page shown

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") e.textContent = String(v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = String(v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) if (c) e.append(c);
  return e;
}

function notice(text) {
  const n = document.getElementById("notice");
  n.textContent = text;
  n.hidden = !text;
  if (text) setTimeout(() => { if (n.textContent === text) n.hidden = true; }, 6000);
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  if (options.method === "POST") {
    const t = sessionStorage.getItem(TOKEN_KEY);
    if (t) headers.Authorization = "Bearer " + t;
    headers["Content-Type"] = "application/json";
  }
  const r = await fetch(path, { ...options, headers, credentials: "omit" });
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
  if (!r.ok) {
    const e = new Error(typeof body === "object" && body.error ? body.error : `HTTP ${r.status}`);
    e.status = r.status;
    throw e;
  }
  return body;
}

const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const when = (ms) => (ms ? new Date(ms).toLocaleString() : "–");
const secs = (a, b) => (a && b ? ((b - a) / 1000).toFixed(1) + " s" : "–");
const outcome = (o) => el("span", { class: `outcome outcome-${o}`, text: o });

async function act(path, what) {
  try {
    const r = await api(path, { method: "POST", body: "{}" });
    notice(`${what}: ${r.run_id || r.stopping || "ok"}`);
    if (r.run_id) location.hash = `#/runs/${encodeURIComponent(r.run_id)}`;
    else route();
  } catch (e) {
    notice(e.status === 401 || e.status === 403 ? `${what} refused (${e.status}): enter the API token above` : `${what}: ${e.message}`);
  }
}

// ---- Pipelines ----------------------------------------------------------

/// The errors of a reload the service refused, as text.
function reloadError(re) {
  if (!re) return null;
  return el("div", { class: "reload-error", role: "alert" },
    el("p", {}, el("b", { text: "The pipeline files have errors" }), ` (reload at ${when(re.at_ms)}); the service runs the version it loaded before:`),
    el("pre", { text: re.error }));
}

/// The last runs as bars: height is the duration, the label says rows and
/// seconds in words (the colour only repeats the outcome).
function runChart(runs) {
  const done = runs.filter((r) => r.ended_at_ms && r.outcome !== "skipped" && r.outcome !== "missed").reverse();
  if (!done.length) return el("span", { class: "muted", text: "no runs yet" });
  const W = 12, G = 3, H = 28;
  const longest = Math.max(...done.map((r) => r.ended_at_ms - r.started_at_ms), 1);
  const words = done.map((r) => `${r.outcome} ${((r.ended_at_ms - r.started_at_ms) / 1000).toFixed(1)} s, ${fmt(r.rows_read)} rows`);
  const chart = svg("svg", { class: "runs-chart", width: done.length * (W + G), height: H, role: "img", "aria-label": `last ${done.length} runs: ${words.join("; ")}` });
  done.forEach((r, i) => {
    const h = Math.max(2, Math.round(((r.ended_at_ms - r.started_at_ms) / longest) * (H - 2)));
    chart.append(svg("rect", { x: i * (W + G), y: H - h, width: W, height: h, class: `bar outcome-${r.outcome}` }, svg("title", { text: words[i] })));
  });
  return chart;
}

async function pipelinesPage() {
  const { pipelines, reload_error } = await api("/api/pipelines");
  const recent = await Promise.all(
    pipelines.map((p) => api(`/api/runs?pipeline=${encodeURIComponent(p.name)}&limit=10`).then((r) => r.runs).catch(() => [])));
  const rows = pipelines.map((p, i) =>
    el("tr", { "data-pipeline": p.name },
      el("td", {}, el("a", { href: `#/pipelines/${encodeURIComponent(p.name)}`, text: p.name })),
      el("td", { class: "opt" }, p.schedule ? `${p.schedule.cron} (${p.schedule.timezone})` : el("span", { class: "muted", text: "manual" })),
      el("td", { class: "opt" }, p.next_fire_times[0] ? p.next_fire_times[0].replace(/\[.*\]$/, "") : "–"),
      el("td", {}, p.running ? outcome("running") : p.last_run ? outcome(p.last_run.outcome) : el("span", { class: "muted", text: "never ran" })),
      el("td", { class: "opt" }, runChart(recent[i])),
      el("td", {},
        p.running
          ? el("button", { type: "button", onclick: () => act(`/api/runs/${encodeURIComponent(p.running.run_id)}/stop`, "stop") , text: "Stop" })
          : el("button", { type: "button", onclick: () => act(`/api/pipelines/${encodeURIComponent(p.name)}/runs`, "run"), text: "Run now" }))));
  main().replaceChildren(
    el("h1", { text: "Pipelines" }),
    reloadError(reload_error),
    el("div", { class: "table-wrap" }, el("table", {},
      el("thead", {}, el("tr", {}, el("th", { text: "Pipeline" }), el("th", { class: "opt", text: "Schedule" }), el("th", { class: "opt", text: "Next run" }), el("th", { text: "Last outcome" }), el("th", { class: "opt", text: "Last runs" }), el("th", { text: "Action" }))),
      el("tbody", {}, rows))));
}

// ---- DAG ----------------------------------------------------------------

const edgeKey = (e) => `${e.from}.${e.port}->${e.to}`;

/// Layered layout: a node's layer is its longest path from a source.
function drawDag(graph) {
  const layer = new Map(graph.nodes.map((n) => [n.id, 0]));
  for (let pass = 0; pass < graph.nodes.length; pass++) {
    for (const e of graph.edges) layer.set(e.to, Math.max(layer.get(e.to), layer.get(e.from) + 1));
  }
  const columns = [];
  for (const n of graph.nodes) (columns[layer.get(n.id)] ||= []).push(n);
  const W = 190, H = 74, GX = 90, GY = 26;
  const pos = new Map();
  columns.forEach((col, x) => col.forEach((n, y) => pos.set(n.id, { x: 20 + x * (W + GX), y: 20 + y * (H + GY) })));
  const width = 40 + columns.length * (W + GX) - GX;
  const height = 40 + Math.max(...columns.map((c) => c.length)) * (H + GY) - GY;
  const root = svg("svg", { class: "dag", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `DAG of ${graph.pipeline}` });
  for (const e of graph.edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
    const label = svg("text", { x: mx, y: (y1 + y2) / 2 - 6, "text-anchor": "middle", class: "edge-label", text: e.port === "out" ? "" : e.port });
    const fill = svg("text", { x: mx, y: (y1 + y2) / 2 + 14, "text-anchor": "middle", class: "edge-fill", text: "" });
    root.append(svg("g", { class: "edge", "data-edge": edgeKey(e) },
      svg("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, "marker-end": "" }), label, fill));
  }
  for (const n of graph.nodes) {
    const p = pos.get(n.id);
    root.append(svg("g", { class: `node ${n.role}`, "data-node": n.id, transform: `translate(${p.x},${p.y})` },
      svg("rect", { width: W, height: H, rx: 6 }),
      svg("text", { x: 10, y: 18, class: "title", text: n.id }),
      svg("text", { x: 10, y: 34, class: "kind", text: `${n.kind} ${n.role}` }),
      svg("text", { x: 10, y: 50, class: "rows", text: "" }),
      svg("text", { x: 10, y: 66, class: "rate", text: "" })));
  }
  return root;
}

/// Figures onto a drawn DAG: rows per node, fill per edge (coloured, and
/// said in words: "full" / "busy").
function paint(root, f) {
  for (const o of f.operators || []) {
    const g = root.querySelector(`g.node[data-node="${CSS.escape(o.id)}"]`);
    if (!g) continue;
    g.querySelector("text.rows").textContent = `in ${fmt(o.rows_in)} · out ${fmt(o.rows_out)} · rej ${fmt(o.rows_rejected)}`;
    g.querySelector("text.rate").textContent = `${fmt(Math.round(o.rows_per_s || 0))} rows/s`;
  }
  for (const c of f.channels || []) {
    const g = root.querySelector(`g.edge[data-edge="${CSS.escape(c.edge)}"]`);
    if (!g) continue;
    const ratio = c.capacity ? c.len / c.capacity : 0;
    const state = ratio >= 0.75 ? "full" : ratio >= 0.4 ? "busy" : "";
    g.classList.toggle("full", state === "full");
    g.classList.toggle("busy", state === "busy");
    g.querySelector("text.edge-fill").textContent = `${c.len}/${c.capacity}${state ? " " + state : ""}`;
  }
}

// ---- Pipeline -----------------------------------------------------------

function runsTable(runs) {
  return el("div", { class: "table-wrap" }, el("table", { class: "runs" },
    el("thead", {}, el("tr", {}, ["Run", "Trigger", "Started", "Took", "Outcome", "Rows read", "Rejected", "Error"].map((h, i) => el("th", { class: i >= 5 && i <= 6 ? "num" : i === 1 || i === 7 ? "opt" : null, text: h })))),
    el("tbody", {}, runs.map((r) => el("tr", { "data-run": r.id },
      el("td", {}, el("a", { href: `#/runs/${encodeURIComponent(r.id)}`, text: r.id })),
      el("td", { class: "opt", text: r.trigger + (r.by ? ` (${r.by})` : "") }),
      el("td", { text: when(r.started_at_ms) }),
      el("td", { text: secs(r.started_at_ms, r.ended_at_ms) }),
      el("td", {}, outcome(r.outcome)),
      el("td", { class: "num", text: fmt(r.rows_read) }),
      el("td", { class: "num", text: fmt(r.rows_rejected) }),
      el("td", { class: "opt", text: r.error ? (r.failed_operator ? r.failed_operator + ": " : "") + r.error.split("\n")[0] : "" }))))));
}

async function pipelinePage(name) {
  const [p, graph, { runs }] = await Promise.all([
    api(`/api/pipelines/${encodeURIComponent(name)}`),
    api(`/api/pipelines/${encodeURIComponent(name)}/graph`),
    api(`/api/runs?pipeline=${encodeURIComponent(name)}&limit=50`),
  ]);
  const checkpoints = el("div", { id: "checkpoints" }, el("p", { class: "muted", text: "Reading…" }));
  main().replaceChildren(
    el("h1", { text: `Pipeline ${p.name}` }),
    el("p", {}, el("span", { class: "muted", text: p.file }), p.description ? " — " + p.description : "", " · ",
      el("a", { href: `#/rejects/${encodeURIComponent(p.name)}`, text: "rejected rows" })),
    reloadError(p.reload_error),
    el("p", {},
      p.schedule ? `Schedule: ${p.schedule.cron} (${p.schedule.timezone}), next ${p.next_fire_times[0] || "–"}` : "No schedule: runs when started here or through the API.",
      " ",
      p.running
        ? el("button", { type: "button", onclick: () => act(`/api/runs/${encodeURIComponent(p.running.run_id)}/stop`, "stop"), text: "Stop" })
        : el("button", { type: "button", onclick: () => act(`/api/pipelines/${encodeURIComponent(p.name)}/runs`, "run"), text: "Run now" })),
    drawDag(graph),
    el("h2", { text: "Runs" }),
    runsTable(runs),
    el("h2", { text: "Checkpoints" }),
    checkpoints);
  try {
    const r = await api(`/api/pipelines/${encodeURIComponent(name)}/checkpoints`);
    checkpoints.replaceChildren(el("pre", { class: "checkpoints", text: r.text }));
  } catch (e) {
    checkpoints.replaceChildren(el("p", { class: "muted", text: e.message }));
  }
}

// ---- Run ----------------------------------------------------------------

function reportTable(report) {
  if (!report || !report.operators) return el("p", { class: "muted", text: "No report." });
  return el("div", { class: "table-wrap" }, el("table", { class: "report" },
    el("thead", {}, el("tr", {}, ["Operator", "Kind", "Rows in", "Rows out", "Rejected", "Time"].map((h, i) => el("th", { class: i >= 2 ? "num" : null, text: h })))),
    el("tbody", {}, report.operators.map((o) => el("tr", { "data-operator": o.id },
      el("td", { text: o.id }), el("td", { text: o.kind }),
      el("td", { class: "num", text: fmt(o.rows_in) }), el("td", { class: "num", text: fmt(o.rows_out) }),
      el("td", { class: "num", text: fmt(o.rows_rejected) }), el("td", { class: "num", text: `${(o.elapsed_ms / 1000).toFixed(2)} s` }))))));
}

async function runPage(id) {
  const run = await api(`/api/runs/${encodeURIComponent(id)}`);
  const graph = await api(`/api/pipelines/${encodeURIComponent(run.pipeline)}/graph`);
  const dag = drawDag(graph);
  const state = el("span", { id: "run-outcome" }, outcome(run.outcome));
  const read = el("b", { "data-figure": "rows-read", text: fmt(run.rows_read) });
  const rate = el("b", { "data-figure": "rows-per-s", text: "–" });
  const cps = el("b", { "data-figure": "checkpoints", text: fmt(run.checkpoints) });
  const report = el("div", { id: "report" }, reportTable(run.report));
  // Checkpoint commits as they happen, from the run's log.
  const commits = el("ol", { id: "checkpoint-events", class: "events" });
  const log = el("pre", { class: "log", id: "log", tabindex: 0 });
  const lines = [];
  const level = el("select", { id: "log-level", "aria-label": "Log level" }, ["all", "ERROR", "WARN", "INFO", "DEBUG"].map((l) => el("option", { value: l, text: l })));
  const search = el("input", { id: "log-search", type: "search", placeholder: "search the log", "aria-label": "Search the log" });
  const shown = () => {
    const want = level.value, q = search.value.toLowerCase();
    log.textContent = lines.filter((l) => (want === "all" || l.includes(`"level":"${want}"`)) && (!q || l.toLowerCase().includes(q))).join("\n");
    log.scrollTop = log.scrollHeight;
  };
  level.addEventListener("change", shown);
  search.addEventListener("input", shown);
  main().replaceChildren(
    el("h1", {}, `Run ${id} of `, el("a", { href: `#/pipelines/${encodeURIComponent(run.pipeline)}`, text: run.pipeline }), " ", state),
    el("div", { class: "figures" },
      el("div", {}, "Rows read", read), el("div", {}, "Rows/s", rate), el("div", {}, "Checkpoints", cps),
      el("div", {}, "Trigger", el("b", { text: run.trigger || (run.live && run.live.trigger && run.live.trigger.kind) || "–" }))),
    dag,
    el("h2", { text: "Checkpoints committed" }), commits,
    el("h2", { text: "Report" }), report,
    el("h2", { text: "Log" }), el("div", { class: "log-tools" }, level, search), log);

  const live = new EventSource(`/api/runs/${encodeURIComponent(id)}/live`);
  closers.push(live);
  live.addEventListener("figures", (ev) => {
    const f = JSON.parse(ev.data);
    paint(dag, f);
    const src = (f.operators || []).filter((o) => o.role === "source");
    read.textContent = fmt(src.reduce((a, o) => a + o.rows_out + o.rows_rejected, 0));
    rate.textContent = fmt(Math.round(src.reduce((a, o) => a + (o.rows_per_s || 0), 0)));
    cps.textContent = fmt(f.checkpoints && f.checkpoints.committed);
    state.replaceChildren(outcome("running"));
  });
  live.addEventListener("end", (ev) => {
    live.close();
    const row = JSON.parse(ev.data || "null");
    if (!row) return;
    state.replaceChildren(outcome(row.outcome));
    read.textContent = fmt(row.rows_read);
    cps.textContent = fmt(row.checkpoints);
    report.replaceChildren(reportTable(row.report));
    if (row.report) paint(dag, { operators: row.report.operators.map((o) => ({ ...o, rows_per_s: 0 })) });
    // The run is over: its channels are gone, so is their fill.
    for (const g of dag.querySelectorAll("g.edge")) {
      g.classList.remove("full", "busy");
      g.querySelector("text.edge-fill").textContent = "";
    }
  });
  const follow = new EventSource(`/api/runs/${encodeURIComponent(id)}/log/follow`);
  closers.push(follow);
  follow.addEventListener("log", (ev) => {
    lines.push(ev.data);
    if (lines.length > 5000) lines.shift();
    shown();
    let e = null;
    try { e = JSON.parse(ev.data); } catch { return; }
    // Run logs are JSON with the event's fields at the top level.
    const f = e && (e.fields || e);
    if (f && f.message === "checkpoint committed") {
      const at = e.timestamp ? new Date(e.timestamp).toLocaleTimeString() : "";
      commits.append(el("li", { "data-epoch": f.epoch, text: `epoch ${f.epoch} committed ${at} (${fmt(f.duration_ms)} ms, state ${fmt(f.state_bytes)} bytes)` }));
    }
  });
  follow.addEventListener("end", () => follow.close());
  follow.onerror = () => follow.close();
}

// ---- Rejects ------------------------------------------------------------

async function rejectsPage(name, params) {
  const qs = new URLSearchParams(params);
  const r = await api(`/api/pipelines/${encodeURIComponent(name)}/rejects?${qs}`);
  const go = (changes) => {
    const next = new URLSearchParams(params);
    for (const [k, v] of Object.entries(changes)) if (v === "" || v === undefined) next.delete(k); else next.set(k, String(v));
    if (!("offset" in changes)) next.delete("offset");
    location.hash = `#/rejects/${encodeURIComponent(name)}?${next}`;
  };
  const operators = [...new Set(r.counts.map((c) => c.operator))];
  const rules = [...new Set(r.counts.map((c) => c.rule))];
  const select = (id, label, values, current) =>
    el("label", {}, `${label} `, el("select", { id, onchange: (e) => go({ [id]: e.target.value }) },
      el("option", { value: "", text: "all" }), values.map((v) => el("option", { value: v, text: v, selected: v === current ? "selected" : null }))));
  const search = el("input", { id: "q", type: "search", value: params.get("q") || "", placeholder: "reason, value or raw text", "aria-label": "Search rejected rows" });
  const offset = Number(params.get("offset") || 0);
  const shown = params.get("replayed");
  const which = el("label", {}, "Show ", el("select", { id: "replayed", onchange: (e) => go({ replayed: e.target.value }) },
    [["", "all rows"], ["false", "not replayed"], ["true", "replayed"]].map(([v, t]) => el("option", { value: v, text: t, selected: (shown || "") === v ? "selected" : null }))));
  const filter = { operator: params.get("operator") || undefined, rule: params.get("rule") || undefined };
  const filterText = Object.entries(filter).filter(([, v]) => v).map(([k, v]) => `${k}=${v}`).join(", ") || "all operators and rules";
  const ofRun = params.get("run");
  const runPick = el("label", {}, "Rejects of ", el("select", { id: "run", onchange: (e) => go({ run: e.target.value }) },
    el("option", { value: "", text: "the files now (last run and replays)" }),
    (r.runs || []).map((id) => el("option", { value: id, text: `run ${id}`, selected: id === ofRun ? "selected" : null }))));
  const replay = el("button", {
    type: "button", id: "replay", disabled: r.replayable && !ofRun ? null : "disabled",
    onclick: async () => {
      try {
        const res = await api(`/api/pipelines/${encodeURIComponent(name)}/replay`, { method: "POST", body: JSON.stringify(filter) });
        notice(`replay of ${fmt(res.rows)} rows started: ${res.run_id}`);
        location.hash = `#/runs/${encodeURIComponent(res.run_id)}`;
      } catch (e) {
        notice(e.status === 401 || e.status === 403 ? `Replay refused (${e.status}): enter the API token above` : `Replay: ${e.message}`);
      }
    },
    text: ofRun ? "Replays take the files as they are now" : r.replayable ? `Replay ${fmt(r.replayable)} row${r.replayable === 1 ? "" : "s"} (${filterText})` : `Nothing to replay (${filterText})`,
  });
  const replays = (r.replays || []).slice().reverse();
  main().replaceChildren(
    el("h1", {}, "Rejected rows of ", el("a", { href: `#/pipelines/${encodeURIComponent(name)}`, text: name })),
    el("p", {}, runPick),
    el("p", { class: "muted", text: r.files.length ? `${fmt(r.total)} rows in ${r.files.map((f) => f.written_by ? `${f.path} (replay ${f.written_by})` : ofRun ? `${f.path} (run ${ofRun})` : `${f.path} (last run)`).join(", ")}${r.truncated ? " (only the first ones read)" : ""}` : "No file sink reads a .rejects port of this pipeline." }),
    el("div", { class: "replay-box" },
      el("p", {}, "Fixed the data or the rules? Send the rows that match the filter below through the pipeline again: rows that now pass reach the sinks once, rows still wrong are rejected again at their line, and no row is replayed twice."),
      replay),
    replays.length ? el("details", { id: "replays", open: "open" }, el("summary", { text: `Replays (${replays.length})` }),
      el("ul", {}, replays.map((x) => el("li", { "data-replay": x.replay },
        el("a", { href: `#/runs/${encodeURIComponent(x.replay)}`, text: x.replay }),
        ` ${when(x.at_ms)}: ${fmt(x.rows)} rows (${x.filter})${x.sink ? ` to sink ${x.sink}` : ""}, `,
        x.finished ? `${fmt(x.rejected_again)} rejected again` : "not finished (the next replay resumes it)")))) : null,
    el("h2", { text: "By operator, rule and reason" }),
    el("div", { class: "table-wrap" }, el("table", { class: "reject-counts" },
      el("thead", {}, el("tr", {}, ["Operator", "Rule", "Reason", "Rows"].map((h, i) => el("th", { class: i === 3 ? "num" : null, text: h })))),
      el("tbody", {}, r.counts.map((c) => el("tr", {},
        el("td", { text: c.operator }),
        el("td", {}, el("button", { type: "button", class: "link", onclick: () => go({ operator: c.operator, rule: c.rule }), text: c.rule })),
        el("td", { text: c.reason }), el("td", { class: "num", text: fmt(c.rows) })))))),
    el("h2", { text: "Rows" }),
    el("form", { class: "reject-filters", onsubmit: (e) => { e.preventDefault(); go({ q: search.value }); } },
      select("operator", "Operator", operators, params.get("operator")), " ",
      select("rule", "Rule", rules, params.get("rule")), " ", which, " ", search, " ",
      el("button", { type: "submit", text: "Filter" })),
    el("p", { id: "reject-matching", text: `${fmt(r.matching)} matching; showing ${r.rows.length ? offset + 1 : 0}–${offset + r.rows.length}` }),
    el("div", { class: "table-wrap" }, el("table", { class: "rejects" },
      el("thead", {}, el("tr", {}, ["Line", "Operator", "Column", "Rule", "Value", "Reason", "Raw", "Replays", "Status"].map((h, i) => el("th", { class: i === 0 || i === 7 ? "num" : i === 2 || i === 6 ? "opt" : null, text: h })))),
      el("tbody", {}, r.rows.map((x) => el("tr", { "data-rule": x.rule, "data-replayed": x.replayed_by ? "yes" : "no", "data-replays": x.replays },
        el("td", { class: "num", text: x.line ?? "–" }), el("td", { text: x.operator }), el("td", { class: "opt", text: x.column ?? "" }),
        el("td", { text: x.rule }), el("td", { text: x.value === null || x.value === undefined ? "" : typeof x.value === "string" ? x.value : JSON.stringify(x.value) }),
        el("td", { text: x.reason }), el("td", { class: "opt raw", text: x.raw ?? "" }),
        el("td", { class: "num", text: x.replays ?? 0 }),
        el("td", { class: "status", text: x.replayed_by ? `replayed by ${x.replayed_by}` : x.raw == null ? "cannot be replayed (no text kept)" : "not replayed" })))))),
    el("p", {},
      el("button", { type: "button", disabled: offset === 0 ? "disabled" : null, onclick: () => go({ offset: Math.max(0, offset - 50) }), text: "Previous" }), " ",
      el("button", { type: "button", disabled: offset + r.rows.length >= r.matching ? "disabled" : null, onclick: () => go({ offset: offset + 50 }), text: "Next" })));
}

// ---- Router -------------------------------------------------------------

async function route() {
  closers.forEach((c) => c.close());
  closers = [];
  const [, page, rest] = (location.hash || "#/").match(/^#\/?([^/]*)\/?(.*)$/) || [];
  const [arg, query] = (rest || "").split("?");
  try {
    if (page === "pipelines" && arg) await pipelinePage(decodeURIComponent(arg));
    else if (page === "rejects" && arg) await rejectsPage(decodeURIComponent(arg), new URLSearchParams(query || ""));
    else if (page === "runs" && arg) await runPage(decodeURIComponent(arg));
    else await pipelinesPage();
  } catch (e) {
    main().replaceChildren(el("h1", { text: "Not available" }), el("p", { text: e.message }));
  }
}

function tokenForm() {
  const state = document.getElementById("token-state");
  const show = () => { state.textContent = sessionStorage.getItem(TOKEN_KEY) ? "token kept for this tab" : "no token"; };
  document.getElementById("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = document.getElementById("token");
    if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value); else sessionStorage.removeItem(TOKEN_KEY);
    input.value = "";
    show();
  });
  show();
}

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => { tokenForm(); route(); });
