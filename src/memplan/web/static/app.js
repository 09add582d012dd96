// memplan's page: a form built from the CLI's own flags (GET /api/schema), the report from
// POST /api/<command> (the CLI's --json, byte for byte) and plotly charts drawn from that JSON.
// The charts read any Report generically: a breakdown tree, phases (with per-category
// breakdowns when the engine gives them), scalars and notes. A report with per-rank results
// (a `ranks` list, each with `breakdown` and `phases`) draws one bar per rank: columns() below.
// The Plan tab is the one that is not a Report: `memplan plan --json` (the ranked plans, why
// the best wins, what removed the most, the feasible plans' points) drawn by renderPlan().
"use strict";

const GIB = 2 ** 30;
const JOBS = {
  train: { command: "train", label: "Training", preset: {} },
  finetune: { command: "train", label: "Fine-tuning (LoRA / QLoRA)", preset: { "lora-rank": "16" } },
  infer: { command: "infer", label: "Inference", preset: {} },
  serve: { command: "serve-capacity", label: "Serving (vLLM)", preset: {} },
  time: { command: "time", label: "Time and cost", preset: { steps: "1000" } },
  params: { command: "params", label: "Parameters", preset: {} },
  // a search takes seconds: it runs when the tab opens and on "search", not on every keystroke
  plan: { command: "plan", label: "Plan a cluster", preset: { gpus: "8", "global-batch": "64" }, manual: true },
};
// Flags the page does not offer (the API refuses jobs > 1: the server searches in one process).
const HIDDEN = { plan: ["jobs"] };
// The curves of each command: [flag, range] for POST /api/sweep (memplan sweep --over).
// [flag, range, the report scalars drawn (first on the left axis, second on the right)]
const SWEEPS = {
  train: [["batch", "1..64", ["peak_bytes"]], ["seq", "256..131072", ["peak_bytes"]]],
  infer: [["batch", "1..64", ["peak_bytes"]], ["prompt-len", "256..131072", ["peak_bytes"]]],
  "serve-capacity": [
    ["gpu-memory-utilization", "0.5..0.95:0.05", ["kv_cache_tokens", "max_concurrency"]],
    ["max-model-len", "512..131072", ["kv_cache_tokens", "max_concurrency"]],
  ],
  time: [["gpus", "1..1024", ["seconds", "cost_usd"]]],
};
const DEFAULTS = { job: "train", model: "meta-llama/Llama-3.2-1B", gpu: "H100-SXM" };
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5"];

const state = { job: DEFAULTS.job, model: DEFAULTS.model, config: null, configName: null, values: {} };
const page = window.memplan = {
  schema: null, report: null, reportText: null, sweeps: {}, error: null, busy: 0,
  generation: 0, expanded: new Set(), firstChartMs: null, colors: {},
};
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- formatting (units.py's rules)
function fmtBytes(n) {
  const steps = [[2 ** 40, "TiB"], [GIB, "GiB"], [2 ** 20, "MiB"], [2 ** 10, "KiB"]];
  for (const [scale, label] of steps) {
    if (Math.abs(n) >= scale) {
      return (n / scale).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 }) + " " + label;
    }
  }
  return Math.trunc(n).toLocaleString("en-US") + " B";
}
function fmtSeconds(s) {
  const g = (x, d) => Number(x.toPrecision(d)).toString();
  if (s < 1) return g(s * 1e3, 3) + " ms";
  if (s < 120) return g(s, 3) + " s";
  if (s < 7200) return g(s / 60, 3) + " min";
  if (s < 3 * 86400) return g(s / 3600, 3) + " h";
  return g(s / 86400, 4) + " days";
}
function fmtValue(v, unit) {
  if (unit === "bytes") return fmtBytes(v);
  if (unit === "params") return Math.round(v).toLocaleString("en-US");
  if (unit === "flops") return v.toExponential(3) + " FLOP";
  if (unit === "s") return fmtSeconds(v);
  return String(v);
}
function scaleOf(unit) {
  return { bytes: [GIB, "GiB"], params: [1e9, "billion parameters"], flops: [1e12, "TFLOP"], s: [1, "s"] }[unit] || [1, unit];
}
function colorOf(key) {
  if (!(key in page.colors)) page.colors[key] = PALETTE[Object.keys(page.colors).length % PALETTE.length];
  return page.colors[key];
}
function esc(text) {
  return String(text).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
}

// ---------------------------------------------------------------- state <-> URL and CLI
function command() { return JOBS[state.job].command; }
function fieldsOf(cmd) { return page.schema.commands[cmd].fields; }
function isDefault(field, value) {
  if (field.kind === "bool") return value !== true;
  return value === "" || value === null || value === undefined || String(value) === String(field.default ?? "");
}
function currentValues(cmd = command()) {
  const out = {};
  for (const field of fieldsOf(cmd)) {
    if (field.name === "model") continue;
    const value = state.values[field.name];
    if (!isDefault(field, value)) out[field.name] = value;
  }
  return out;
}
function body(extra = {}, drop = null) {
  const values = currentValues();
  if (drop) delete values[drop];
  const out = state.config !== null
    ? { config: state.config, config_name: state.configName || "config.json" }
    : { model: state.model };
  return Object.assign(out, values, extra);
}
function shellQuote(text) {
  return /^[A-Za-z0-9_.\/:=,@+-]+$/.test(text) ? text : "'" + String(text).replace(/'/g, "'\\''") + "'";
}
function cliCommand() {
  const parts = ["memplan", command(), shellQuote(state.config !== null ? "./" + (state.configName || "config.json") : state.model)];
  for (const [name, value] of Object.entries(currentValues())) {
    parts.push("--" + name);
    if (value !== true) parts.push(shellQuote(String(value)));
  }
  return parts.join(" ");
}
function writeUrl() {
  const params = new URLSearchParams();
  params.set("job", state.job);
  if (state.config === null) params.set("model", state.model);
  for (const [name, value] of Object.entries(currentValues())) params.set(name, value === true ? "true" : value);
  if (!state.values.gpu) params.set("gpu", ""); // no GPU: say so, or the page's default returns
  history.replaceState(null, "", "?" + params.toString());
}
function readUrl() {
  const params = new URLSearchParams(location.search);
  if (params.has("job") && params.get("job") in JOBS) state.job = params.get("job");
  state.values = Object.assign({ gpu: DEFAULTS.gpu }, JOBS[state.job].preset);
  if (params.has("model")) state.model = params.get("model");
  for (const [key, value] of params) {
    if (key === "job" || key === "model") continue;
    state.values[key] = value === "true" ? true : value === "false" ? false : value;
  }
}

// ---------------------------------------------------------------- the form, from the schema
function renderJobs() {
  const nav = $("jobs");
  nav.innerHTML = "";
  for (const [job, spec] of Object.entries(JOBS)) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = spec.label;
    button.dataset.job = job;
    button.setAttribute("aria-pressed", String(job === state.job));
    button.addEventListener("click", () => {
      if (job === state.job) return;
      const gpu = state.values.gpu;
      state.job = job;
      state.values = Object.assign({}, JOBS[job].preset, gpu ? { gpu } : {});
      page.expanded.clear();
      renderJobs();
      renderForm();
      showJob();
      if (JOBS[job].manual) { clearTimeout(timer); run(); } else update();
    });
    nav.appendChild(button);
  }
}
function fieldInput(field) {
  const id = "f-" + field.name;
  const value = state.values[field.name];
  let input;
  if (field.kind === "bool") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = value === true;
  } else if (field.kind === "choice") {
    input = document.createElement("select");
    const options = field.required || field.default !== null ? field.choices : ["", ...field.choices];
    for (const choice of options) input.add(new Option(choice === "" ? "(not set)" : choice, choice));
    input.value = value ?? field.default ?? "";
  } else {
    input = document.createElement("input");
    input.type = "text";
    input.value = value ?? (field.default ?? "");
    const stated = /\(default:? ([^)]*)\)/.exec(field.help || ""); // "(default 2048, or ...)"
    input.placeholder = stated ? "default: " + stated[1] : field.metavar || "";
    if (field.name === "gpu") input.setAttribute("list", "gpus-list");
  }
  input.id = id;
  input.name = field.name;
  input.title = (field.help || "") + (field.default !== null ? ` (default ${field.default})` : "");
  input.addEventListener(field.kind === "bool" || field.kind === "choice" ? "change" : "input", () => {
    state.values[field.name] = field.kind === "bool" ? input.checked : input.value.trim();
    update();
  });
  const row = document.createElement("div");
  row.className = "field";
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = field.flag || field.name;
  label.title = input.title;
  row.append(label, input);
  return row;
}
function renderForm() {
  const form = $("form");
  form.innerHTML = "";
  const groups = new Map();
  const hidden = HIDDEN[command()] || [];
  for (const field of fieldsOf(command())) {
    if (field.name === "model" || hidden.includes(field.name)) continue;
    const title = field.group === "options" || !field.group ? command() : field.group;
    if (!groups.has(title)) groups.set(title, []);
    groups.get(title).push(field);
  }
  let first = true;
  for (const [title, fields] of groups) {
    const box = document.createElement("details");
    const changed = fields.some((f) => !isDefault(f, state.values[f.name]));
    box.open = first || changed || !/by hand/.test(title);
    box.innerHTML = `<summary>${esc(title)}</summary>`;
    for (const field of fields) box.appendChild(fieldInput(field));
    form.appendChild(box);
    first = false;
  }
}

// ---------------------------------------------------------------- API
async function post(path, payload) {
  const response = await fetch(path, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(payload),
  });
  const text = await response.text();
  if (!response.ok) {
    let message = text;
    try { message = JSON.parse(text).error || text; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return text;
}
let timer = null;
function update() {
  if (JOBS[state.job].manual) { // a plan search waits for "search" (or Enter)
    writeUrl();
    $("cli").textContent = cliCommand();
    $("run-plan").classList.add("stale");
    return;
  }
  page.pending = true;
  clearTimeout(timer);
  timer = setTimeout(run, 200);
}
// The plan tab shows its table and chart; the others the Report's charts and breakdown.
function showJob() {
  const plan = command() === "plan";
  for (const id of ["charts", "breakdown-title", "tree", "notes"]) $(id).hidden = plan;
  $("plan").hidden = !plan;
  $("run-plan").hidden = !plan;
}
// The page is idle (tests wait for it) when no update is pending and no request is running.
function idle() { return page.ready && !page.pending && page.busy === 0; }
page.idle = idle;
async function run() {
  page.pending = false;
  const generation = ++page.generation;
  writeUrl();
  $("cli").textContent = cliCommand();
  page.busy += 1;
  $("run-plan").classList.remove("stale");
  $("run-plan").disabled = true;
  try {
    const text = await post("/api/" + command(), body());
    if (generation !== page.generation) return;
    page.reportText = text;
    page.report = JSON.parse(text);
    page.error = null;
    $("error").hidden = true;
    renderReport(page.report);
    await runSweeps(generation, page.report);
  } catch (error) {
    if (generation !== page.generation) return;
    page.error = error.message;
    $("error").textContent = error.message;
    $("error").hidden = false;
    $("verdict").textContent = "";
  } finally {
    page.busy -= 1;
    $("run-plan").disabled = false;
  }
}
async function runSweeps(generation, report) {
  const defs = SWEEPS[command()] || [];
  page.sweeps = {};
  for (let i = 0; i < 2; i += 1) {
    const el = $("chart-sweep-" + i);
    el.hidden = !defs[i];
    if (!defs[i]) Plotly.purge(el);
  }
  await Promise.all(defs.map(async ([flag, range, metrics], i) => {
    if (flag === "batch" && report.max_batch_size > 32) {
      range = "1.." + Math.min(4096, 2 ** Math.ceil(Math.log2(report.max_batch_size * 2)));
    }
    try {
      const text = await post("/api/sweep", body({ job: command(), over: `${flag}=${range}` }, flag));
      if (generation !== page.generation) return;
      page.sweeps[flag] = JSON.parse(text);
      sweepChart($("chart-sweep-" + i), page.sweeps[flag], metrics);
    } catch (error) {
      if (generation !== page.generation) return;
      $("chart-sweep-" + i).innerHTML = `<p class="muted">${esc(flag)} sweep: ${esc(error.message)}</p>`;
    }
  }));
}

// ---------------------------------------------------------------- the report
function renderReport(report) {
  if (command() === "plan") { renderPlan(report); return; }
  renderVerdict(report);
  breakdownChart($("chart-breakdown"), report);
  phasesChart($("chart-phases"), report);
  if (page.firstChartMs === null) page.firstChartMs = performance.now(); // since navigation start
  renderTree(report);
  $("notes").innerHTML = (report.notes || []).map((n) => `<li>${esc(n)}</li>`).join("");
}
function gpuLine(report) {
  if (typeof report.usable_bytes === "number") return ["usable GPU memory", report.usable_bytes];
  if (typeof report.gpu_memory_bytes === "number") return ["GPU memory", report.gpu_memory_bytes];
  return null;
}
function renderVerdict(report) {
  const box = $("verdict");
  const gpu = report.gpu || (report.setup && report.setup.gpu) || "the GPU";
  let html = "";
  if (typeof report.peak_bytes === "number") {
    html += `<span id="peak" data-bytes="${report.peak_bytes}">peak ${fmtBytes(report.peak_bytes)}</span>`;
    if (report.peak_phase) html += ` <small>at ${esc(report.peak_phase)}</small>`;
  }
  const hasFit = "fits" in report || typeof report.headroom_bytes === "number";
  if (hasFit) {
    const fits = "fits" in report ? report.fits : report.headroom_bytes >= 0;
    const room = report.headroom_bytes;
    const text = fits
      ? `fits on ${esc(gpu)}` + (typeof room === "number" ? ` with ${fmtBytes(room)} to spare` : "")
      : `does not fit on ${esc(gpu)}` + (typeof room === "number" ? `: short by ${fmtBytes(-room)}` : "");
    html = `<span id="fit" class="${fits ? "ok" : "bad"}" data-fits="${fits}">${text}</span> · ` + html;
    const limit = report.limit || (report.peak_phase ? `the peak at ${report.peak_phase}` : "");
    if (limit) html += `<small>limited by: ${esc(limit)}</small>`;
    const extra = [];
    if (typeof report.max_batch_size === "number") extra.push(`largest micro-batch ${report.max_batch_size}`);
    if (typeof report.max_seq_len === "number") extra.push(`longest sequence ${report.max_seq_len.toLocaleString("en-US")}`);
    if (typeof report.kv_cache_tokens === "number") extra.push(`KV cache ${report.kv_cache_tokens.toLocaleString("en-US")} tokens`);
    if (typeof report.max_concurrency === "number") extra.push(`max concurrency ${report.max_concurrency}`);
    if (extra.length) html += `<small>${extra.join(" · ")}</small>`;
  } else if (typeof report.seconds === "number") {
    html = `<span id="time" data-seconds="${report.seconds}">${fmtSeconds(report.seconds)}</span>`
      + ` <small>${report.gpu_hours < 100 ? Number(report.gpu_hours.toPrecision(3)) : Math.round(report.gpu_hours).toLocaleString("en-US")} GPU-hours`
      + (typeof report.cost_usd === "number" ? ` · $${Math.round(report.cost_usd).toLocaleString("en-US")}` : "")
      + ` · ${report.flops.toExponential(3)} FLOP</small>`;
  } else if (typeof report.total_params === "number") {
    html = `<span id="params" data-params="${report.total_params}">${report.total_params.toLocaleString("en-US")} parameters</span>`;
  }
  if (typeof report.verdict === "string") html += `<small id="cli-verdict">${esc(report.verdict)}</small>`;
  box.innerHTML = html;
}
function columns(report) {
  if (Array.isArray(report.ranks) && report.ranks.length) {
    return report.ranks.map((r, i) => ({ label: String(r.name || r.label || "rank " + i), breakdown: r.breakdown, phases: r.phases || [] }));
  }
  return [{ label: report.breakdown.key, breakdown: report.breakdown, phases: report.phases || [] }];
}
function hoverText(node) {
  const lines = [`<b>${esc(node.key)}</b>`];
  if (node.formula) lines.push("formula: " + esc(node.formula));
  if (node.source) lines.push("source: " + esc(node.source));
  if (node.note) lines.push(esc(node.note));
  if (node.children) {
    lines.push(`${node.children.length} items (click to expand)`);
    for (const child of node.children.slice(0, 6)) {
      lines.push(`  ${esc(child.key)}: ${fmtValue(child.total, child.unit)}` + (child.formula ? ` = ${esc(child.formula)}` : ""));
    }
  }
  return lines.join("<br>");
}
// The nodes a stacked bar shows: the root's children, each replaced by its own children when
// the user expanded it (clicked its segment).
function segments(node, path = "") {
  const out = [];
  for (const child of node.children || [node]) {
    const key = path ? path + "/" + child.key : child.key;
    if (child.children && page.expanded.has(key)) out.push(...segments(child, key));
    else out.push({ path: key, node: child });
  }
  return out;
}
function breakdownChart(el, report) {
  const cols = columns(report);
  const unit = cols[0].breakdown.unit || "bytes";
  const [scale, label] = scaleOf(unit);
  const byPath = new Map();
  cols.forEach((col, i) => {
    for (const seg of segments(col.breakdown)) {
      if (!byPath.has(seg.path)) byPath.set(seg.path, cols.map(() => null));
      byPath.get(seg.path)[i] = seg.node;
    }
  });
  const traces = [...byPath].map(([path, nodes]) => ({
    type: "bar", name: path, x: cols.map((c) => c.label), y: nodes.map((n) => (n ? n.total / scale : 0)),
    marker: { color: colorOf(path) },
    customdata: nodes.map((n) => (n ? hoverText(n) + "<br>" + fmtValue(n.total, n.unit) : "")),
    hovertemplate: "%{customdata}<extra></extra>", meta: path,
  }));
  const shapes = [];
  const annotations = [];
  const line = unit === "bytes" ? gpuLine(report) : null;
  if (line) {
    shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, y0: line[1] / scale, y1: line[1] / scale, line: { dash: "dash", color: "#000" } });
    annotations.push({ xref: "paper", x: 1, xanchor: "right", y: line[1] / scale, yanchor: "bottom", text: `${line[0]} ${fmtBytes(line[1])}`, showarrow: false, font: { size: 11 } });
  }
  const root = cols[0].breakdown.key;
  const what = unit !== "bytes" ? `${root} (${label})` : root === "peak" ? "memory at the peak" : "memory: " + root;
  const title = what + " · click a segment to expand it";
  Plotly.react(el, traces, {
    title: { text: title, font: { size: 14 } }, barmode: "stack", yaxis: { title: { text: label } },
    shapes, annotations, margin: { t: 40, r: 10, b: 40, l: 60 }, legend: { font: { size: 10 } },
    hoverlabel: { align: "left" },
  }, { displaylogo: false, responsive: true });
  el.removeAllListeners && el.removeAllListeners("plotly_click");
  el.on("plotly_click", (event) => {
    const path = event.points[0].data.meta;
    const node = findNode(columns(page.report)[0].breakdown, path);
    if (node && node.children) page.expanded.add(path);
    else { // a leaf: collapse its parent
      page.expanded.delete(path.split("/").slice(0, -1).join("/"));
    }
    breakdownChart(el, page.report);
  });
}
function findNode(root, path) {
  let node = { children: root.children || [root] };
  for (const part of path.split("/")) {
    node = (node.children || []).find((c) => c.key === part);
    if (!node) return null;
  }
  return node;
}
function phasesChart(el, report) {
  const timelines = [];
  const ranked = Array.isArray(report.ranks) && report.ranks.length > 0;
  const first = Array.isArray(report.first_step_phases) && !ranked ? report.first_step_phases : null;
  for (const col of columns(report)) {
    if (col.phases.length) timelines.push([(ranked ? col.label + " " : "") + (first ? "steady state" : ""), col.phases]);
  }
  if (first) timelines.push(["first step", first]);
  el.hidden = !timelines.length;
  if (!timelines.length) { Plotly.purge(el); return; }
  const categories = [];
  for (const [, phases] of timelines) {
    for (const phase of phases) {
      for (const key of Object.keys(phase.breakdown || { total: 1 })) if (!categories.includes(key)) categories.push(key);
    }
  }
  // several timelines: a two-level axis (timeline, phase); one: the phase names alone
  const x = [[], []];
  for (const [name, phases] of timelines) for (const phase of phases) { x[0].push(name); x[1].push(phase.name); }
  const xs = timelines.length > 1 ? x : x[1];
  const traces = categories.map((key) => {
    const values = [];
    for (const [, phases] of timelines) {
      for (const phase of phases) values.push(((phase.breakdown ? phase.breakdown[key] : phase.bytes) || 0) / GIB);
    }
    return {
      type: "bar", name: key, x: xs, y: values, marker: { color: colorOf(key) },
      hovertemplate: `<b>${esc(key)}</b> at %{x}: %{y:.3f} GiB<extra></extra>`,
    };
  }).filter((t) => t.y.some((v) => v));
  const shapes = [];
  const line = gpuLine(report);
  if (line) shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, y0: line[1] / GIB, y1: line[1] / GIB, line: { dash: "dash", color: "#000" } });
  if (typeof report.peak_bytes === "number") shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, y0: report.peak_bytes / GIB, y1: report.peak_bytes / GIB, line: { dash: "dot", color: "#b42318" } });
  Plotly.react(el, traces, {
    title: { text: "memory at each phase (dotted: the peak)", font: { size: 14 } }, barmode: "stack",
    yaxis: { title: { text: "GiB" } }, xaxis: { tickangle: -60, tickfont: { size: 9 } }, shapes,
    margin: { t: 40, r: 10, b: 90, l: 60 }, legend: { font: { size: 10 } },
  }, { displaylogo: false, responsive: true });
}
function sweepChart(el, sweep, wanted) {
  const good = sweep.points.filter((p) => !("error" in p));
  const metrics = (wanted || sweep.metrics).filter((m) => sweep.metrics.includes(m)).slice(0, 2);
  const units = { _bytes: [GIB, " (GiB)"], seconds: [3600, " (hours)"], cost_usd: [1, " (USD)"] };
  const names = { seconds: "time", cost_usd: "cost" };
  const nameOf = (metric) => names[metric] || metric;
  const unitOf = (metric) => units[Object.keys(units).find((k) => metric.endsWith(k))] || [1, ""];
  const traces = metrics.map((metric, i) => {
    const [scale, suffix] = unitOf(metric);
    return {
      type: "scatter", mode: "lines+markers", name: nameOf(metric) + suffix, yaxis: i ? "y2" : "y",
      x: good.map((p) => p.value), y: good.map((p) => p[metric] / scale),
      marker: { size: 8, color: good.map((p) => (p.fits === false ? "#b42318" : colorOf(metric))) },
      line: { color: colorOf(metric) },
      hovertemplate: `${esc(sweep.over)} %{x}: %{y:,.4g}${suffix}<extra>${esc(metric)}</extra>`,
    };
  });
  const shapes = [];
  const annotations = [];
  const limit = sweep.usable_bytes || sweep.gpu_memory_bytes;
  if (limit && metrics[0] && metrics[0].endsWith("_bytes")) {
    shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, y0: limit / GIB, y1: limit / GIB, line: { dash: "dash", color: "#000" } });
  }
  const log = sweep.spacing === "doubling";
  // On a log axis plotly.js 3 places a shape by its data value, an annotation by its log10.
  const xPos = (v) => (log ? Math.log10(v) : v);
  if (sweep.last_fit !== null && sweep.first_no_fit !== null) {
    shapes.push({ type: "line", yref: "paper", y0: 0, y1: 1, x0: sweep.last_fit, x1: sweep.last_fit, line: { dash: "dot", color: "#157f3b" } });
    const exact = sweep.exact_limit ? ` (exact: ${sweep.exact_limit.value.toLocaleString("en-US")})` : "";
    annotations.push({ x: xPos(sweep.last_fit), yref: "paper", y: 1, text: `largest that fits: ${sweep.last_fit.toLocaleString("en-US")}${exact}`, showarrow: false, xanchor: "right", font: { size: 11, color: "#157f3b" } });
  }
  const axis = (metric) => ({ title: { text: metric ? nameOf(metric) + unitOf(metric)[1] : "" }, rangemode: "tozero" });
  const layout = {
    title: { text: `${metrics.map(nameOf).join(", ")} against ${sweep.over}` + (good.length < sweep.points.length ? ` (${sweep.points.length - good.length} not evaluated)` : ""), font: { size: 14 } },
    xaxis: log
      ? {
        title: { text: sweep.over }, type: "log", tickvals: good.map((p) => p.value),
        ticktext: good.map((p) => shortCount(p.value)), // the range is in log10 units
        range: [Math.log10(good[0].value) - 0.1, Math.log10(good[good.length - 1].value) + 0.1],
      }
      : { title: { text: sweep.over } },
    yaxis: axis(metrics[0]),
    shapes, annotations, margin: { t: 40, r: 60, b: 50, l: 60 }, legend: { orientation: "h", y: -0.3, font: { size: 10 } },
  };
  if (metrics[1]) layout.yaxis2 = Object.assign(axis(metrics[1]), { overlaying: "y", side: "right" });
  Plotly.react(el, traces, layout, { displaylogo: false, responsive: true });
}
function renderTree(report) {
  const rows = [];
  const root = report.breakdown;
  const grand = root.total || 1;
  const walk = (node, depth) => {
    const share = node.unit === "bytes" || node.unit === "params" ? (100 * node.total / grand).toFixed(1) + "%" : "";
    const title = [node.formula && "formula: " + node.formula, node.source && "source: " + node.source, node.note].filter(Boolean).join("\n");
    rows.push(`<tr title="${esc(title)}" data-key="${esc(node.key)}"><td style="padding-left:${6 + 14 * depth}px">${esc(node.key)}</td>`
      + `<td>${fmtValue(node.total, node.unit)}</td><td>${share}</td><td>${esc(node.children ? node.note || "" : node.formula || "")}</td></tr>`);
    if (depth < 3) for (const child of node.children || []) walk(child, depth + 1);
  };
  walk(root, 0);
  $("tree").tBodies[0].innerHTML = rows.join("");
}

// ---------------------------------------------------------------- config.json drop / paste
function useConfig(text, name) {
  state.config = text;
  state.configName = name || "config.json";
  $("config-status").textContent = `using ${state.configName} (${text.length.toLocaleString("en-US")} characters)`;
  $("config-paste").hidden = true;
  $("config-clear").hidden = false;
  $("model").disabled = true;
  update();
}
function setupConfig() {
  const drop = $("config-drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) useConfig(await file.text(), file.name);
  });
  $("config-file").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (file) useConfig(await file.text(), file.name);
  });
  $("config-paste-toggle").addEventListener("click", (e) => { e.preventDefault(); $("config-paste").hidden = !$("config-paste").hidden; });
  $("config-use").addEventListener("click", () => useConfig($("config-text").value, "config.json"));
  $("config-clear").addEventListener("click", () => {
    state.config = null;
    $("config-clear").hidden = true;
    $("model").disabled = false;
    $("config-status").textContent = "";
    update();
  });
}

// ---------------------------------------------------------------- start
function shortCount(n) {
  for (const [scale, label] of [[1e12, "T"], [1e9, "B"], [1e6, "M"]]) if (n >= scale) return (n / scale).toFixed(2) + label;
  if (n >= 1024 && n % 1024 === 0) return n / 1024 + "k";
  return n.toLocaleString("en-US");
}
async function start() {
  const [schema, models, gpus] = await Promise.all(["/api/schema", "/api/models", "/api/gpus"].map((u) => fetch(u).then((r) => r.json())));
  page.schema = schema;
  const list = $("models-list");
  const names = new Map();
  for (const m of models.models) {
    const count = m.total_params ? shortCount(m.total_params) : "unsupported";
    for (const name of [m.id, ...m.aliases, ...m.old_ids]) {
      names.set(name.toLowerCase(), m);
      list.appendChild(new Option(`${m.id} · ${count}` + (name === m.id ? "" : ` (${name})`), name));
    }
  }
  const gpuList = document.createElement("datalist");
  gpuList.id = "gpus-list";
  for (const g of gpus) gpuList.appendChild(new Option(`${g.name} · ${(g.memory_bytes / GIB).toFixed(1)} GiB`, g.name));
  document.body.appendChild(gpuList);
  readUrl();
  const model = $("model");
  model.value = state.model;
  const info = () => {
    const m = names.get(model.value.trim().toLowerCase());
    $("model-info").textContent = m ? `${m.id} · ${m.total_params ? m.total_params.toLocaleString("en-US") + " parameters" : ""}` : "";
  };
  info();
  model.addEventListener("input", () => { state.model = model.value.trim(); info(); if (state.model) update(); });
  $("copy-cli").addEventListener("click", async () => {
    const text = $("cli").textContent;
    try { await navigator.clipboard.writeText(text); $("copied").textContent = "copied"; } catch (e) { $("copied").textContent = "select the command above to copy it"; }
  });
  $("download-json").addEventListener("click", () => {
    if (!page.reportText) return;
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([page.reportText], { type: "application/json" }));
    link.download = `memplan-${command()}-${(page.report.model || "model").replace(/[^A-Za-z0-9_.-]+/g, "_")}.json`;
    link.click();
    URL.revokeObjectURL(link.href);
  });
  $("run-plan").addEventListener("click", () => { clearTimeout(timer); run(); });
  $("form").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && JOBS[state.job].manual) { e.preventDefault(); run(); }
  });
  setupConfig();
  renderJobs();
  renderForm();
  showJob();
  await run();
  page.ready = true;
}
window.addEventListener("DOMContentLoaded", () => {
  start().catch((error) => { $("error").textContent = String(error); $("error").hidden = false; });
});
