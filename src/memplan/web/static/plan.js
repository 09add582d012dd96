// The Plan tab: `memplan plan --json` (POST /api/plan, byte for byte) as the CLI prints it (the
// ranked table, why the best beats the runner-up, what removed the most, the commands that
// reproduce #1) and a chart of step time against the worst rank's peak for the feasible plans
// the JSON's `feasible_points` carries (all of them, or a sample its `rule` describes).
// Uses app.js's helpers ($, esc, fmtBytes, fmtSeconds); loaded after it.
"use strict";

function renderPlan(data) {
  const box = $("verdict");
  const best = data.plans[0];
  const head = best
    ? `<span id="plan-best" class="ok" data-layout="${esc(best.layout)}">#1 ${esc(best.layout)}</span>`
      + ` <small>${fmtSeconds(best.step_seconds)} a step · MFU ${(100 * best.mfu).toFixed(1)}%`
      + ` · peak ${fmtBytes(best.peak_bytes)} on the worst rank</small>`
    : `<span id="plan-best" class="bad">no plan fits on every rank</span>`
      + ` <small>more GPUs, a shorter sequence or a smaller batch</small>`;
  const counts = `${data.model} on ${data.gpus} x ${esc(data.gpu)}, seq ${data.seq}, global batch `
    + `${data.global_batch}: ${data.plans_considered.toLocaleString("en-US")} plans, `
    + `${data.plans_evaluated.toLocaleString("en-US")} evaluated, `
    + `${data.plans_feasible.toLocaleString("en-US")} fit (${data.seconds.toFixed(2)} s)`;
  box.innerHTML = head + `<small id="plan-counts">${esc(counts)}</small>`
    + `<small id="cli-verdict">${esc(data.verdict)}</small>`;
  planTable(data);
  const removed = Object.entries(data.removed);
  $("plan-why").textContent = data.why || "";
  $("plan-removed").textContent = removed.length
    ? `removed most: ${removed[0][0]} (${removed[0][1].toLocaleString("en-US")} plans)` : "";
  $("plan-removed-all").innerHTML = removed
    .map(([rule, n]) => `<li>${esc(rule)}: ${n.toLocaleString("en-US")}</li>`).join("");
  $("plan-reproduce").textContent = best
    ? `memplan train ${best.args.join(" ")}\nmemplan time ${best.time_args.join(" ")}` : "";
  planChart($("chart-plan"), data);
  if (page.firstChartMs === null) page.firstChartMs = performance.now();
}

function planTable(data) {
  const plans = data.plans;
  const money = plans.length && "cost_usd" in plans[0];
  const train = plans.length && "train_seconds" in plans[0];
  const heads = ["#", "plan", "peak (worst rank)", "free", "step", "MFU", "tokens/s"]
    .concat(train ? ["to train"] : [], money ? ["cost"] : [], ["limit"]);
  $("plan-table").tHead.innerHTML = "<tr>" + heads.map((h) => `<th>${h}</th>`).join("") + "</tr>";
  $("plan-table").tBodies[0].innerHTML = plans.map((p, i) => {
    const cells = [i + 1, esc(p.layout), fmtBytes(p.peak_bytes), fmtBytes(p.headroom_bytes),
      fmtSeconds(p.step_seconds), (100 * p.mfu).toFixed(1) + "%",
      Math.round(p.tokens_per_s).toLocaleString("en-US")];
    if (train) cells.push(fmtSeconds(p.train_seconds));
    if (money) cells.push("$" + Math.round(p.cost_usd).toLocaleString("en-US"));
    cells.push(esc(p.limit));
    const title = `memplan train ${p.args.join(" ")}`;
    return `<tr title="${esc(title)}" data-peak="${p.peak_bytes}" data-step="${p.step_seconds}" data-layout="${esc(p.layout)}">`
      + cells.map((c) => `<td>${c}</td>`).join("") + "</tr>";
  }).join("");
}

// Three disjoint marker traces (the table's plans, the rest of the Pareto front, the other
// plans: one marker per point of `feasible_points`) and the front as a line.
function planChart(el, data) {
  const pts = data.feasible_points;
  const shown = data.plans.length;
  const n = pts.peak_bytes.length;
  const maxStep = Math.max(...pts.step_seconds, 0);
  const minStep = Math.min(...pts.step_seconds, maxStep);
  const log = minStep > 0 && maxStep / minStep > 8; // a few slow plans would flatten the rest
  const [scale, unit] = maxStep < 1 ? [1e-3, "ms"] : [1, "s"];
  const groups = [ // drawn in this order: the table's plans on top
    ["other feasible plans", (i) => pts.rank[i] > shown && !pts.pareto[i], "#98a2b3", 6],
    ["the rest of the Pareto front", (i) => pts.rank[i] > shown && pts.pareto[i], "#ff7f0e", 8],
    ["the table's plans (top " + shown + ")", (i) => pts.rank[i] <= shown, "#1f5fbf", 10],
  ];
  const traces = groups.map(([name, pick, color, size]) => {
    const idx = [...Array(n).keys()].filter(pick);
    return {
      type: "scatter", mode: "markers", name, marker: { color, size, line: { width: 0.5, color: "#fff" } },
      x: idx.map((i) => pts.peak_bytes[i] / GIB), y: idx.map((i) => pts.step_seconds[i] / scale),
      customdata: idx.map((i) => `#${pts.rank[i]} ${esc(pts.layout[i])}<br>peak ${fmtBytes(pts.peak_bytes[i])}`
        + ` · step ${fmtSeconds(pts.step_seconds[i])}` + (pts.pareto[i] ? "<br>on the Pareto front" : "")),
      hovertemplate: "%{customdata}<extra></extra>",
    };
  });
  const front = [...Array(n).keys()].filter((i) => pts.pareto[i])
    .sort((a, b) => pts.peak_bytes[a] - pts.peak_bytes[b]);
  traces.unshift({
    type: "scatter", mode: "lines", name: "Pareto front (no plan is both faster and lighter)",
    x: front.map((i) => pts.peak_bytes[i] / GIB), y: front.map((i) => pts.step_seconds[i] / scale),
    line: { shape: "hv", color: "#ff7f0e", width: 1.5, dash: "dot" }, hoverinfo: "skip",
  });
  const shapes = [];
  const annotations = [];
  const best = data.plans[0];
  if (best) {
    const usable = (best.peak_bytes + best.headroom_bytes) / GIB;
    shapes.push({ type: "line", yref: "paper", y0: 0, y1: 1, x0: usable, x1: usable, line: { dash: "dash", color: "#000" } });
    annotations.push({ x: usable, yref: "paper", y: 1, xanchor: "right", yanchor: "bottom", showarrow: false,
      text: `usable per GPU ${fmtBytes(best.peak_bytes + best.headroom_bytes)}`, font: { size: 11 } });
    const y = best.step_seconds / scale; // an annotation on a log axis is placed by its log10
    annotations.push({ x: best.peak_bytes / GIB, y: log ? Math.log10(y) : y, text: "<b>#1</b>", showarrow: true,
      arrowhead: 0, ax: 24, ay: -28, bgcolor: "#fff", font: { size: 12, color: "#1f5fbf" } });
  }
  Plotly.react(el, traces, {
    title: { text: "step time against peak memory on the worst rank", font: { size: 14 } },
    xaxis: { title: { text: "peak per GPU, worst rank (GiB)" }, rangemode: "tozero" },
    yaxis: log
      ? { title: { text: `step time (${unit}, log scale)` }, type: "log" }
      : { title: { text: `step time (${unit})` }, rangemode: "tozero" },
    shapes, annotations, margin: { t: 40, r: 20, b: 50, l: 60 },
    legend: { orientation: "h", y: -0.18, font: { size: 10 }, traceorder: "reversed" },
    hoverlabel: { align: "left" },
  }, { displaylogo: false, responsive: true });
  const what = pts.selection === "all"
    ? `All ${n.toLocaleString("en-US")} feasible plans`
    : `${n.toLocaleString("en-US")} of the ${data.plans_feasible.toLocaleString("en-US")} feasible plans: ${pts.rule.replace(/^at most \d+ of the feasible plans: /, "")}`;
  $("plan-caption").textContent = `${what}, one point each (hover a point for its plan). `
    + `Plans that do not fit on every rank are not drawn; the dashed line is the memory each GPU can use.`;
}
