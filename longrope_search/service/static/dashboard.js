/* longrope-search dashboard: plain JavaScript over the JSON API, charts drawn with uPlot.
 *
 * The page polls the job list every 2 s, and the selected job's details every 2 s while it is
 * queued or running (once more when it ends, then no more). With `?token=...` in the page's URL
 * every API call carries `Authorization: Bearer <token>`, the export downloads included (fetched,
 * then saved from a Blob). Text from the server (job names, errors) goes into the DOM only as
 * text nodes. `window.dashboard` exposes the uPlot charts and the last data, for tests.
 */
(function () {
  "use strict";

  const POLL_MS = 2000;
  // The API's words (/api/vocabulary: statuses, states, operators, formats), loaded first:
  // the page spells none of them itself.
  let V = null;
  const COLORS = {
    best: "#1f5fbf", median: "#3b4552", cost: "#0b3d91",
    ok: "rgba(31, 95, 191, 0.35)", pruned: "rgba(212, 140, 20, 0.75)", failed: "#c62828",
    pi: "#e07b00", ntk: "#2e9d4a", yarn: "#8e44ad", short: "#c62828",
  };
  const SEED_LABELS = {pi: "PI", ntk: "NTK", yarn: "YaRN"};
  // Candidates by how they were made (the API's `kind`); other kinds take PALETTE's colours.
  const KIND_COLORS = {
    seed: "#8e44ad", mutation: "rgba(31, 95, 191, 0.45)", crossover: "rgba(46, 157, 74, 0.55)",
    "gradient step": "#d35400", polished: "#c62828", "n̂ sweep": "#5d6d7e",
  };
  const PALETTE = ["#1f5fbf", "#2e9d4a", "#e07b00", "#8e44ad", "#c62828", "#16a085", "#7f8c8d",
    "#d35400", "#2c3e50", "#b7950b"];
  const colorOf = (kind, i) => KIND_COLORS[kind] || PALETTE[i % PALETTE.length];
  const CHART_HEIGHT = 270;
  const COST_HEIGHT = 340;  // the main chart, full width
  const LANES_HEIGHT = 110;
  // The lanes under the cost chart: y of each status's ticks there (no perplexity).
  const LANE = {pruned: 1.5, failed: 0.5};  // heights in the lane chart

  const params = new URLSearchParams(window.location.search);
  const token = params.get("token");

  const state = {
    jobs: [],              // last /api/jobs
    selected: params.get("job"),
    detail: null,          // last /api/jobs/{name}
    candidates: null,      // last /api/jobs/{name}/candidates
    curve: null,           // last /api/jobs/{name}/curve (best and median against cost)
    best: null,            // last /api/jobs/{name}/best (null until there is one)
    detailKey: null,       // what the candidates/best fetched last correspond to
    detailTimer: null,
    detailRun: 0,          // bumped on each selection: late answers for an old job are dropped
    loading: false,        // a detail refresh is under way
    compare: new Set(params.getAll("compare")),  // jobs ticked "compare"
    sort: {key: "ppl", asc: true},  // the candidate table's order
  };
  const charts = {};
  window.dashboard = {charts, state};

  const $ = (id) => document.getElementById(id);

  // ---- small helpers -------------------------------------------------------------------------

  /** An element with attributes and children (strings become text nodes, never HTML). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k === "style") node.style.cssText = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function setText(node, text) {
    text = text === null || text === undefined ? "" : String(text);
    if (node.textContent !== text) node.textContent = text;
  }

  function fmtPpl(x) {
    return x === null || x === undefined || !isFinite(x) ? "–" : Number(x).toFixed(3);
  }

  function fmtNum(x, digits = 4) {
    return x === null || x === undefined ? "–" : String(Number(Number(x).toPrecision(digits)));
  }

  function fmtPct(x) {
    if (x === null || x === undefined || !isFinite(x)) return "–";
    return (x > 0 ? "+" : "") + x.toFixed(1) + " %";
  }

  /** Forward tokens in human units: 950, 12.3k, 1.2M, 3.4B. */
  function fmtTokens(x) {
    if (x === null || x === undefined || !isFinite(x)) return "–";
    for (const [unit, size] of [["B", 1e9], ["M", 1e6], ["k", 1e3]]) {
      if (Math.abs(x) >= size) return `${Number((x / size).toPrecision(3))}${unit}`;
    }
    return String(Math.round(x));
  }

  /** Generations mean something only to the evolution strategy (others fill tables in blocks). */
  const isEvolution = (job) => (job.strategy || (job.spec || {}).strategy || "evolution") ===
    "evolution";

  /** "1.2M of 5M tokens", or "1.2M tokens" without a token budget; null when unknown. */
  function costText(job) {
    if (job.cost_tokens === null || job.cost_tokens === undefined) return null;
    return job.budget_tokens ? `${fmtTokens(job.cost_tokens)} of ${fmtTokens(job.budget_tokens)}` +
      " tokens" : `${fmtTokens(job.cost_tokens)} tokens`;
  }

  function fmtEta(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.round(seconds);
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
    return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
  }

  /** A finished job is done, also one run outside the server, whose progress is unknown. */
  function fractionDone(job) {
    return job.state === V.states.FINISHED ? 1 : job.fraction_done || 0;
  }

  /** Gain of `ppl` over a reference perplexity, in percent of the reference. */
  function gainPct(ppl, reference) {
    if (!isFinite(ppl) || !isFinite(reference) || reference <= 0) return null;
    return (reference - ppl) / reference * 100;
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, method = "GET") {
    const headers = token ? {Authorization: `Bearer ${token}`} : {};
    const response = await fetch(path, {method, headers, cache: "no-store"});
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new ApiError(response.status, `${response.status}: ${detail}`);
    }
    return response;
  }

  const apiJson = async (path) => (await api(path)).json();
  const jobPath = (name, rest = "") => `/api/jobs/${encodeURIComponent(name)}${rest}`;

  function showError(message) {
    const box = $("error");
    if (!message) { box.hidden = true; setText(box, ""); return; }
    if (message instanceof ApiError && message.status === 401) {
      message = "The server wants a token: open this page as /dashboard/?token=YOUR_TOKEN.";
    }
    setText(box, String(message.message || message));
    box.hidden = false;
  }

  // ---- the job list --------------------------------------------------------------------------

  function jobButton(job) {
    const button = el("button", {type: "button", class: "job-button", dataset: {job: job.name}},
      el("span", {class: "row"},
        el("span", {class: "name"}, job.name),
        el("span", {class: "state", "data-role": "state"})),
      el("progress", {max: 1, value: 0, "data-role": "progress"}),
      el("span", {class: "row meta"},
        el("span", {"data-role": "progress-text"}),
        el("span", {"data-role": "best"})),
      el("span", {class: "meta", "data-role": "eta"}),
      el("span", {class: "job-error", "data-role": "error"}));
    button.addEventListener("click", () => select(job.name));
    const box = el("input", {type: "checkbox", "data-compare": job.name,
      "aria-label": `compare ${job.name}`, checked: state.compare.has(job.name)});
    box.addEventListener("change", () => {
      if (box.checked) state.compare.add(job.name); else state.compare.delete(job.name);
      refreshCompare();
    });
    return el("li", {dataset: {job: job.name}}, button,
      el("label", {class: "compare"}, box, " compare"));
  }

  function renderJobList() {
    const list = $("job-list");
    const present = new Map([...list.children].map((li) => [li.dataset.job, li]));
    state.jobs.forEach((job, i) => {
      let li = present.get(job.name);
      if (!li) li = jobButton(job);
      present.delete(job.name);
      if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
      const part = (role) => li.querySelector(`[data-role="${role}"]`);
      li.dataset.state = job.state;
      const badge = part("state");
      badge.dataset.state = job.state;
      setText(badge, job.state);
      const progress = part("progress");
      const fraction = fractionDone(job);
      progress.value = fraction;
      const pct = `${Math.round(fraction * 100)} %`;
      progress.setAttribute("aria-label", `${job.name}: ${pct} of the evaluations done`);
      const gen = job.generation ?? (job.state === V.states.FINISHED ? job.generations : "–");
      setText(part("progress-text"), [pct, costText(job),
        isEvolution(job) ? `generation ${gen}/${job.generations}` : job.strategy]
        .filter(Boolean).join(" · "));
      setText(part("best"), `best ppl ${fmtPpl(job.best_ppl)}`);
      const eta = part("eta");
      eta.hidden = job.state !== V.states.RUNNING;
      setText(eta, `ETA ${fmtEta(job.eta_seconds)}`);
      const error = part("error");
      error.hidden = !job.error;
      setText(error, job.error || "");
      li.querySelector("button").setAttribute("aria-current",
        job.name === state.selected ? "true" : "false");
    });
    for (const li of present.values()) li.remove();
    $("jobs-empty").hidden = state.jobs.length > 0;
  }

  let jobsTimer = null;

  /** One polling chain: a call between ticks (after Cancel or Resume) moves the next tick. */
  async function pollJobs() {
    clearTimeout(jobsTimer);
    try {
      state.jobs = await apiJson("/api/jobs");
      setText($("connection"), `updated ${new Date().toLocaleTimeString()}`);
      showError(null);
      renderJobList();
      if (!state.selected && state.jobs.length) {
        const active = state.jobs.find((j) => V.active.includes(j.state));
        select((active || state.jobs[state.jobs.length - 1]).name);
      } else if (state.selected) {
        // The selected job started again (resumed) or changed state: follow it.
        const job = state.jobs.find((j) => j.name === state.selected);
        const stale = job && (!state.detail || job.state !== state.detail.state);
        if (stale && !state.detailTimer && !state.loading) refreshDetail(state.detailRun);
      }
    } catch (e) {
      setText($("connection"), "cannot reach the server");
      showError(e);
    }
    clearTimeout(jobsTimer);  // a call that finished meanwhile set one too
    jobsTimer = setTimeout(pollJobs, POLL_MS);
  }

  // ---- the selected job ----------------------------------------------------------------------

  function select(name) {
    if (name === state.selected && state.detail) return;
    state.selected = name;
    state.detail = state.candidates = state.curve = state.best = state.detailKey = null;
    state.detailRun += 1;
    clearTimeout(state.detailTimer);
    state.detailTimer = null;
    for (const key of Object.keys(charts)) { charts[key].destroy(); delete charts[key]; }
    params.set("job", name);
    window.history.replaceState(null, "", `${window.location.pathname}?${params}`);
    renderJobList();
    refreshDetail(state.detailRun);
  }

  async function refreshDetail(run) {
    state.detailTimer = null;
    state.loading = true;
    const name = state.selected;
    try {
      const detail = await apiJson(jobPath(name));
      // Candidates and best change with every finished evaluation (the ledger's, before its
      // generation's table is written) and when the job ends; before the first there are
      // none, and /best would answer 404.
      const done = detail.generation_summaries.reduce((n, g) => n + g.new, 0);
      const key = `${detail.generation_summaries.length}|${done}|${detail.state}`;
      let {candidates, curve, best} = state;
      if (!detail.generation_summaries.length) {
        [candidates, curve, best] = [
          {generation: [], candidate_id: [], operator: [], status: [], ppl: [], n_hat: [],
            cost_tokens: [], cost_spent_tokens: [], kind: []},
          {generation: [], evaluations: [], cost_spent_tokens: [], best_ppl: [],
            median_ppl: [], cost_known: true, cost_estimated: false, descents: []},
          null];
      } else if (key !== state.detailKey) {
        [candidates, curve, best] = await Promise.all([
          apiJson(jobPath(name, "/candidates")),
          apiJson(jobPath(name, "/curve")),
          apiJson(jobPath(name, "/best")).catch((e) => {
            if (e.status === 404) return null;  // no finished evaluation yet
            throw e;
          }),
        ]);
      }
      if (run !== state.detailRun) return;  // another job was selected meanwhile
      Object.assign(state, {detail, candidates, curve, best, detailKey: key});
      // The list shows the same summary as the header, not one from up to 2 s earlier.
      const i = state.jobs.findIndex((j) => j.name === detail.name);
      if (i >= 0) state.jobs[i] = {...state.jobs[i], ...detail};
      renderJobList();
      renderDetail();
      showError(null);
      refreshCompare();
      if (V.active.includes(detail.state)) schedule(run);
    } catch (e) {
      if (run !== state.detailRun) return;
      showError(e);
      // retry after errors, not for a job that is gone (404) or broken (409)
      if (!(e instanceof ApiError && [404, 409].includes(e.status))) schedule(run);
    } finally {
      if (run === state.detailRun) state.loading = false;
    }
  }

  function schedule(run) {
    clearTimeout(state.detailTimer);
    state.detailTimer = setTimeout(() => refreshDetail(run), POLL_MS);
  }

  function renderDetail() {
    const {detail} = state;
    $("job").hidden = false;
    $("job").dataset.job = detail.name;
    $("job").dataset.state = detail.state;
    setText($("job-name"), detail.name);
    const badge = $("job-state");
    badge.dataset.state = detail.state;
    setText(badge, detail.state);
    const fraction = fractionDone(detail);
    $("job-progress").value = fraction;
    const done = detail.candidates;
    setText($("job-progress-text"), [`${Math.round(fraction * 100)} %`,
      done || !fraction ? `${done} of ${detail.budget} candidates` : "done",
      costText(detail)].filter(Boolean).join(" · "));
    $("job-cancel").disabled = !V.cancellable.includes(detail.state);
    $("job-resume").disabled = !V.resumable.includes(detail.state);

    const spec = detail.spec || {};
    const gens = detail.generation_summaries;
    const lastGen = gens.length ? gens[gens.length - 1].generation : "–";
    const facts = [
      isEvolution(detail)
        ? ["generation", `${detail.generation ?? lastGen} of ${detail.generations}`]
        : ["strategy", detail.strategy ?? spec.strategy],
      ["cost spent", costText(detail) ?? "–"],
      ["best ppl", fmtPpl(detail.best_ppl)],
      // Counted from the tables: a job run outside the server has no progress record.
      ["candidates", state.candidates ? state.candidates.status.length : "–"],
      ["pruned early", state.candidates
        ? state.candidates.status.filter((st) => st === V.statuses.PRUNED).length : "–"],
      ["extension", spec.extension_ratio ? `×${fmtNum(spec.extension_ratio)}` : "–"],
      ["model", spec.model ?? "–"],
    ];
    if (detail.reused) facts.splice(5, 0, ["reused from the ledger", detail.reused]);
    if (detail.stages && detail.stages.length) {  // a chained job: which stage, of which
      const at = detail.stage ?? (detail.state === V.states.FINISHED ? detail.stages.length - 1
        : 0);
      facts.unshift(["stage", `${at + 1} of ${detail.stages.length}: ` +
        detail.stages.map((s, i) => (i === at ? `[${s}]` : s)).join(" → ")]);
    }
    if (detail.state === V.states.RUNNING) facts.splice(3, 0, ["ETA", fmtEta(detail.eta_seconds)]);
    $("job-facts").replaceChildren(...facts.map(([k, v]) =>
      el("div", {}, el("dt", {}, k), el("dd", {}, v))));
    const error = $("job-error");
    error.hidden = !detail.error;
    setText(error, detail.error ? `Error: ${detail.error}` : "");

    drawCost();
    renderTable();
    drawDescents();
    drawLambdas();
    drawLengths();
    renderBest();
    renderTopK();
    // The exports read best.json, which a job writes when it finishes.
    const exportable = !!(state.best && state.best.final);
    for (const b of document.querySelectorAll("[data-export]")) b.disabled = !exportable;
    const status = $("export-status");
    if (!exportable) setText(status, "Available when the job has finished.");
    else if (status.textContent.startsWith("Available")) setText(status, "");
  }

  // ---- charts --------------------------------------------------------------------------------

  /** The width of the card a chart sits in (also while the chart itself is hidden). */
  function chartWidth(container) {
    const card = container.closest(".card");
    const style = window.getComputedStyle(card);
    const inner = card.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    return Math.max(280, Math.floor(inner));
  }

  const chartHeight = (key) => ({cost: COST_HEIGHT, lanes: LANES_HEIGHT})[key] || CHART_HEIGHT;

  /** Create the chart, or only give it new data when its series are the same as before. */
  function draw(key, opts, data) {
    const container = document.querySelector(`[data-chart="${key}"]`);
    const signature = JSON.stringify(opts.series.map((s) => s.label));
    const old = charts[key];
    if (old && old.signature === signature) {
      old.setData(data);
      return old;
    }
    if (old) old.destroy();
    opts = {width: chartWidth(container), height: chartHeight(key), ...opts};
    const chart = new uPlot(opts, data, container);
    chart.signature = signature;
    charts[key] = chart;
    return chart;
  }

  const axis = (label, extra) => ({
    label, stroke: "#3b4552", grid: {stroke: "#e6eaef", width: 1},
    ticks: {stroke: "#d0d6de", width: 1}, font: "12px system-ui, sans-serif",
    labelFont: "bold 12px system-ui, sans-serif", ...extra,
  });

  const integerAxis = (label) => axis(label, {
    incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
    values: (u, splits) => splits.map((v) => (Number.isInteger(v) ? String(v) : "")),
  });

  /** Log scale when the values span more than a factor of 20, else linear. */
  function pplScale(values) {
    const finite = values.filter((v) => v !== null && isFinite(v) && v > 0);
    if (!finite.length) return {auto: true};
    const lo = Math.min(...finite), hi = Math.max(...finite);
    return hi / lo > 20 ? {distr: 3, log: 10} : {auto: true};
  }

  /** Show a chart, or its "nothing yet" line instead (the chart object stays, empty). */
  function showChart(key, show) {
    document.querySelector(`[data-chart="${key}"]`).hidden = !show;
    const empty = document.querySelector(`[data-empty-for="${key}"]`);
    if (empty) empty.hidden = show;
  }

  const dot = (color, size) => ({show: true, size, fill: color, stroke: color, width: 0});

  /** Where candidates and table ends lie on the x axis: the cost spent when they were
   * recorded, or their count of evaluations when the tables do not know their cost. */
  function xPositions() {
    const {curve, candidates: c} = state;
    return curve.cost_known
      ? {cands: c.cost_spent_tokens, ends: curve.cost_spent_tokens}
      : {cands: c.ppl.map((_, i) => i + 1), ends: curve.evaluations};
  }

  function costAxis(curve) {
    if (!curve.cost_known) return integerAxis("evaluations");
    return axis(curve.cost_estimated ? "forward tokens spent (estimated)" : "forward tokens spent",
      {values: (u, splits) => splits.map(fmtTokens)});
  }

  /** uPlot's aligned data from rows [x, ...ys]: one ascending x, a column per series. */
  function columns(rows, width) {
    rows.sort((a, b) => a[0] - b[0]);
    return Array.from({length: width}, (_, k) => rows.map((r) => r[k]));
  }

  /** A series drawn as one mark per point, `shape(path, x, y, r)` in canvas pixels. */
  function marks(shape) {
    return (u, seriesIdx, idx0, idx1) => {
      const path = new Path2D();
      const ys = u.data[seriesIdx], scale = u.series[seriesIdx].scale;
      for (let i = idx0; i <= idx1; i++) {
        if (ys[i] === null || ys[i] === undefined) continue;
        shape(path, u.valToPos(u.data[0][i], "x", true), u.valToPos(ys[i], scale, true),
          7 * uPlot.pxRatio);
      }
      return {stroke: path, fill: null, clip: null, band: null, gaps: null, flags: 1};
    };
  }
  const tick = (p, x, y, r) => { p.moveTo(x, y - r); p.lineTo(x, y + r); };
  const cross = (p, x, y, r) => {
    r *= 0.6;
    p.moveTo(x - r, y - r); p.lineTo(x + r, y + r); p.moveTo(x - r, y + r); p.lineTo(x + r, y - r);
  };

  /** Best so far and median against cost, every complete candidate a dot coloured by how it
   * was made (seed, mutation, crossover, gradient step, …); pruned and failed candidates have
   * no perplexity to show, so they are marks in a lane chart underneath. */
  function drawCost() {
    const {curve, candidates: c} = state;
    const x = xPositions();
    const {OK, PRUNED, FAILED, MINIBATCH, MISSING} = V.statuses;
    const kinds = [...new Set(c.kind.filter((k, i) => c.status[i] === OK && c.ppl[i] !== null))];
    const width = 3 + kinds.length;
    const rows = x.ends.map((end, j) => {
      const row = new Array(width).fill(null);
      [row[0], row[1], row[2]] = [end, curve.best_ppl[j], curve.median_ppl[j]];
      return row;
    });
    const lanes = [];
    const counts = {[OK]: 0, [PRUNED]: 0, [FAILED]: 0};
    const perKind = Object.fromEntries(kinds.map((k) => [k, 0]));
    c.status.forEach((status, i) => {
      if (status === MISSING || x.cands[i] === null) return;  // never evaluated
      if (status === MINIBATCH) return;  // a step's loss on some documents: see the descents
      const kind = status === OK && c.ppl[i] !== null ? OK : status === PRUNED ? PRUNED : FAILED;
      counts[kind] += 1;
      if (kind === OK) {
        const row = new Array(width).fill(null);
        row[0] = x.cands[i];
        row[3 + kinds.indexOf(c.kind[i])] = c.ppl[i];
        perKind[c.kind[i]] += 1;
        rows.push(row);
      } else {
        lanes.push([x.cands[i], kind === PRUNED ? LANE.pruned : null,
          kind === FAILED ? LANE.failed : null]);
      }
    });
    const data = columns(rows, width);
    const total = counts[OK] + counts[PRUNED] + counts[FAILED];
    showChart("cost", data[0].length + lanes.length > 0);
    showChart("lanes", data[0].length + lanes.length > 0);
    renderCounts(counts, total);

    const xmax = Math.max(1, ...data[0], ...lanes.map((r) => r[0]));
    const xScale = {time: false, range: () => [0, xmax * 1.02]};
    const xSeries = {label: curve.cost_known ? "cost spent" : "evaluation",
      value: (u, v) => (curve.cost_known ? fmtTokens(v) : v ?? "–")};
    const cursor = {sync: {key: "cost"}, points: {size: 8}};
    const ppl = (u, v) => fmtPpl(v);
    draw("cost", {
      scales: {x: xScale, y: pplScale(data.slice(1).flat())},
      axes: [costAxis(curve), axis("perplexity", {size: 60})],
      cursor,
      series: [
        xSeries,
        {label: "best so far", stroke: COLORS.cost, width: 3, spanGaps: true, value: ppl,
          points: {show: true, size: 5, fill: COLORS.cost}},
        {label: "median", stroke: COLORS.median, width: 2, dash: [6, 4], spanGaps: true,
          value: ppl, points: {show: true, size: 4, fill: COLORS.median}},
        ...kinds.map((k, i) => ({label: `${k} (${perKind[k]})`, stroke: colorOf(k, i),
          paths: () => null, points: dot(colorOf(k, i), 4), value: ppl})),
      ],
    }, data);
    const laneName = (v) => (v === LANE.pruned ? PRUNED : v === LANE.failed ? FAILED : "");
    draw("lanes", {
      scales: {x: xScale, y: {range: [0, 2]}},
      axes: [axis(null, {size: 8, values: (u, splits) => splits.map(() => ""),
        ticks: {show: false}}),
      axis("no result", {size: 60, splits: () => [LANE.failed, LANE.pruned],
        values: (u, splits) => splits.map(laneName), grid: {show: false}})],
      cursor,
      series: [
        xSeries,
        {label: "pruned (partial score, not a result)", stroke: COLORS.pruned, width: 2,
          paths: marks(tick), points: {show: false}, value: (u, v) => laneName(v) || "–"},
        {label: "failed (no score)", stroke: COLORS.failed, width: 2, paths: marks(cross),
          points: {show: false}, value: (u, v) => laneName(v) || "–"},
      ],
    }, columns(lanes, 3));
  }

  /** Each gradient descent's perplexity against cost, step by step, one line per start. */
  function drawDescents() {
    const {curve} = state;
    const descents = curve.descents || [];
    document.querySelector('[data-card="descents"]').hidden = !descents.length;
    if (!descents.length) {
      if (charts.descents) { charts.descents.destroy(); delete charts.descents; }
      return;
    }
    const width = 1 + descents.length;
    const rows = [];
    descents.forEach((d, j) => d.cost_spent_tokens.forEach((at, i) => {
      if (at === null || d.ppl[i] === null) return;
      const row = new Array(width).fill(null);
      [row[0], row[1 + j]] = [at, d.ppl[i]];
      rows.push(row);
    }));
    const data = columns(rows, width);
    const ppl = (u, v) => fmtPpl(v);
    draw("descents", {
      scales: {x: {time: false}, y: pplScale(data.slice(1).flat())},
      axes: [axis("forward tokens spent", {values: (u, splits) => splits.map(fmtTokens)}),
        axis("perplexity (at exact λ)", {size: 60})],
      series: [
        {label: "cost spent", value: (u, v) => fmtTokens(v)},
        ...descents.map((d, j) => ({label: `${d.start} (gen ${d.generation})`,
          stroke: PALETTE[j % PALETTE.length], width: 2, spanGaps: true, value: ppl,
          points: {show: true, size: 5, fill: PALETTE[j % PALETTE.length]}})),
      ],
    }, data);
  }

  function renderCounts(counts, total) {
    const counter = $("candidate-counts");
    const {OK, PRUNED, FAILED} = V.statuses;
    Object.entries(counts).forEach(([k, v]) => { counter.dataset[k] = v; });
    counter.replaceChildren(
      el("b", {}, String(total)), " candidates evaluated: ", el("b", {}, String(counts[OK])),
      " complete, ", el("b", {}, String(counts[PRUNED])), " pruned early (partial score, not a ",
      "result), ", el("b", {}, String(counts[FAILED])), " failed.");
  }

  /** Held-out perplexity against prompt length (log₂ axis), one line per method of the
   * comparison; hidden for jobs whose comparison predates results by length. */
  function drawLengths() {
    const held = state.best && state.best.heldout;
    const rows = held && held.rows && held.rows[0].ppl_by_length ? held.rows : [];
    document.querySelector('[data-card="lengths"]').hidden = !rows.length;
    if (!rows.length) {
      if (charts.lengths) { charts.lengths.destroy(); delete charts.lengths; }
      return;
    }
    if (held.semantics) $("lengths-how").textContent = held.semantics;
    const lengths = Object.keys(rows[0].ppl_by_length).map(Number).sort((a, b) => a - b);
    const data = [lengths, ...rows.map((r) => lengths.map((n) => r.ppl_by_length[String(n)]))];
    const color = (r, j) => (r.method === "best" ? COLORS.best : COLORS[r.method] ||
      (r.method === "unmodified" ? COLORS.median : PALETTE[j % PALETTE.length]));
    draw("lengths", {
      scales: {x: {time: false, distr: 3, log: 2}, y: pplScale(data.slice(1).flat())},
      axes: [axis("prompt length (tokens)", {values: (u, splits) => splits.map(String)}),
        axis("held-out perplexity", {size: 60})],
      series: [
        {label: "tokens"},
        ...rows.map((r, j) => ({label: SEED_LABELS[r.method] || r.method,
          stroke: color(r, j), width: r.method === "best" ? 3 : 1.75,
          dash: r.method === "best" ? undefined : [5, 4], value: (u, v) => fmtPpl(v),
          points: {show: true, size: 5, fill: color(r, j)}})),
      ],
    }, data);
  }

  function drawLambdas() {
    const best = state.best;
    showChart("lambdas", !!best);
    if (!best) {
      if (charts.lambdas) { charts.lambdas.destroy(); delete charts.lambdas; }
      return;
    }
    const seeds = ["pi", "ntk", "yarn"].filter((s) => best.seed_lambdas && best.seed_lambdas[s]);
    const short = best.short_lambdas ? [best.short_lambdas] : [];
    const data = [best.lambdas.map((_, i) => i), best.lambdas, ...short,
      ...seeds.map((s) => best.seed_lambdas[s])];
    draw("lambdas", {
      scales: {x: {time: false}},
      axes: [integerAxis("rotary pair index"), axis("λ (rescale factor)", {size: 55})],
      series: [
        {label: "pair"},
        {label: "best", stroke: COLORS.best, width: 3, value: (u, v) => fmtNum(v),
          points: {show: true, size: 5, fill: COLORS.best}},
        ...short.map(() => ({label: "short (recovery)", stroke: COLORS.short, width: 2.5,
          value: (u, v) => fmtNum(v), points: {show: true, size: 4, fill: COLORS.short}})),
        ...seeds.map((s) => ({label: SEED_LABELS[s], stroke: COLORS[s], width: 1.5,
          dash: [5, 4], value: (u, v) => fmtNum(v), points: {show: false}})),
      ],
    }, data);
  }

  // ---- numbers -------------------------------------------------------------------------------

  /** The seeds' perplexity on the search documents: from best.json, else from the candidates. */
  function seedPpl() {
    if (state.best && state.best.seed_ppl) return state.best.seed_ppl;
    const c = state.candidates, out = {};
    if (!c) return out;
    c.operator.forEach((op, i) => {
      if (op.startsWith(V.seed_prefix) && c.status[i] === V.statuses.OK) {
        out[op.slice(V.seed_prefix.length)] = c.ppl[i];
      }
    });
    return out;
  }

  function renderBest() {
    const box = $("best");
    const best = state.best;
    if (!best) {
      box.replaceChildren(el("p", {class: "muted"}, "No finished evaluation yet."));
      return;
    }
    const ppl = best.final && best.search_ppl !== undefined ? best.search_ppl : best.ppl;
    const rows = [
      ["perplexity (search documents)", fmtPpl(ppl), "ppl"],
      ["n̂", String(best.n_hat), "n-hat"],
      ["attention factor", fmtNum(best.attention_factor, 5), "attention-factor"],
      ["candidate", `#${best.candidate_id} (${best.operator})`, "candidate"],
    ];
    if (best.final && best.original_length) {
      rows.push(["lengths", `${best.original_length} → ${best.target_length} ` +
        `(×${fmtNum(best.extension_ratio)})`, "lengths"]);
    }
    const seeds = seedPpl();
    for (const s of ["pi", "ntk", "yarn"]) {
      if (seeds[s] === undefined || seeds[s] === null) continue;
      const gain = gainPct(ppl, seeds[s]);
      rows.push([`gain over ${SEED_LABELS[s]} (ppl ${fmtPpl(seeds[s])})`,
        el("span", {class: gain >= 0 ? "gain-pos" : "gain-neg"}, fmtPct(gain)), `gain-${s}`]);
    }
    const numbers = el("dl", {class: "best-numbers", "data-final": best.final ? "true" : "false"},
      rows.map(([k, v, id]) => [el("dt", {}, k), el("dd", {dataset: {field: id}}, v)]));
    const parts = [numbers];
    if (!best.final) {
      const why = V.active.includes(state.detail.state) ? "the job is still running"
        : `the job ended ${state.detail.state}, without a final record`;
      parts.push(el("p", {class: "hint"}, `Best of the evaluations finished so far; ${why}.`));
    }
    if (best.n_hat > 0) {
      const without = best.search_ppl_without_n_hat;
      parts.push(el("p", {class: "note", id: "nhat-note"},
        `Inference engines (transformers, vLLM) ignore n̂: they rescale every position. ` +
        (without !== undefined && without !== null
          ? `Without n̂ this candidate's perplexity is ${fmtPpl(without)} ` +
            `(${fmtPpl(ppl)} with it).`
          : best.final ? "This job's record has no perplexity without n̂ (an older version " +
            "wrote it)." : "Its perplexity without n̂ is measured when the job finishes.")));
    }
    if (best.heldout && best.heldout.rows) parts.push(heldoutTable(best.heldout));
    box.replaceChildren(...parts);
  }

  function heldoutTable(heldout) {
    const names = {best: "best (this search)", ...SEED_LABELS};
    return el("table", {id: "heldout", class: "heldout"},
      el("caption", {}, `Held-out documents (${heldout.rows.length} methods)`),
      el("thead", {}, el("tr", {},
        el("th", {scope: "col"}, "method"), el("th", {scope: "col"}, "perplexity"),
        el("th", {scope: "col"}, "mean NLL"), el("th", {scope: "col"}, "best's gain"))),
      el("tbody", {}, heldout.rows.map((r) => el("tr", {dataset: {method: r.method}},
        el("th", {scope: "row"}, names[r.method] || r.method),
        el("td", {}, fmtPpl(r.ppl)), el("td", {}, fmtNum(r.mean_nll, 4)),
        el("td", {}, r.method === "best" ? "" : fmtPct(r.gain_vs_this_pct))))));
  }

  function renderTopK() {
    const body = document.querySelector("#nhat-hist tbody");
    const values = state.best ? state.best.top_k_n_hat : [];
    const table = $("nhat-hist");
    table.dataset.count = values.length;
    const counts = new Map();
    for (const v of values) counts.set(v, (counts.get(v) || 0) + 1);
    const most = Math.max(1, ...counts.values());
    const rows = [...counts.entries()].sort((a, b) => a[0] - b[0]).map(([v, k]) =>
      el("tr", {dataset: {nHat: v, count: k}},
        el("th", {scope: "row"}, String(v)),
        el("td", {class: "bar-cell"},
          el("span", {class: "bar", style: `width: ${Math.max(2, 80 * k / most)}%`,
            "aria-hidden": "true"}),
          el("span", {class: "bar-count"}, String(k)))));
    if (!rows.length) {
      rows.push(el("tr", {}, el("td", {colspan: 2, class: "muted"}, "No candidates yet.")));
    }
    body.replaceChildren(...rows);
    table.querySelector("thead th:last-child").textContent =
      values.length ? `candidates (top ${values.length})` : "candidates";
  }

  // ---- export --------------------------------------------------------------------------------

  async function download(format) {
    const name = state.selected;
    const status = $("export-status");
    setText(status, `Preparing the ${format} export…`);
    try {
      const response = await api(jobPath(name, `/export?format=${encodeURIComponent(format)}`));
      const disposition = response.headers.get("content-disposition") || "";
      const match = /filename="?([^";]+)"?/.exec(disposition);
      const filename = match ? match[1] : `${name}.${format}.json`;
      save(await response.blob(), filename);
      setText(status, `Saved ${filename}.`);
    } catch (e) {
      setText(status, `Export failed: ${e.message}`);
    }
  }

  /** Save a Blob as a file the browser downloads. */
  function save(blob, filename) {
    const url = URL.createObjectURL(blob);
    const link = el("a", {href: url, download: filename, hidden: true});
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // The JSON exports' buttons, by the API's ExportFormat names (the formats come from the API).
  const EXPORT_BUTTONS = {
    HF: ["HF config", "rope_parameters block for a Hugging Face config.json"],
    VLLM: ["vLLM", "rope_scaling, hf_overrides and --max-model-len for vLLM"],
    LONGROPE: ["LongRoPE", "the whole record: λ, n̂, attention factor, lengths, perplexities"],
  };

  function renderExportButtons() {
    const buttons = V.json_exports.map((format) => {
      const name = Object.keys(V.export_formats).find((k) => V.export_formats[k] === format);
      const [label, title] = EXPORT_BUTTONS[name] || [format, `the ${format} export`];
      const button = el("button", {type: "button", dataset: {export: format}, title}, label);
      button.disabled = true;
      button.addEventListener("click", () => download(format));
      return button;
    });
    $("exports").replaceChildren(...buttons);
  }


  // ---- cancel and resume ---------------------------------------------------------------------

  async function act(action) {
    const status = $("action-status");
    try {
      const job = await (await api(jobPath(state.selected, `/${action}`), "POST")).json();
      setText(status, action === "cancel" ? `Cancel asked (${job.state}): it stops at its ` +
        "next evaluation." : `Queued again (${job.state}): it continues from its ledger.`);
      clearTimeout(state.detailTimer);
      refreshDetail(state.detailRun);
      pollJobs();
    } catch (e) {
      setText(status, `${action} failed: ${e.message}`);
    }
  }

  $("job-cancel").addEventListener("click", () => act("cancel"));
  $("job-resume").addEventListener("click", () => act("resume"));

  // ---- the candidate table -------------------------------------------------------------------

  const TABLE_COLUMNS = [["generation", "gen."], ["candidate_id", "candidate"],
    ["kind", "made by"], ["status", "status"], ["ppl", "perplexity"],
    ["partial_ppl", "partial (pruned)"], ["n_hat", "n̂"], ["cost_tokens", "cost (tokens)"],
    ["cost_spent_tokens", "spent by then"]];
  const MAX_TABLE_ROWS = 200;  // shown; the downloads hold every row

  /** One row per candidate; a pruned one's partial score is kept apart from the results. */
  function tableRows() {
    const c = state.candidates;
    return c.candidate_id.map((_, i) => ({
      ...Object.fromEntries(TABLE_COLUMNS.map(([k]) => [k, c[k] ? c[k][i] : null])),
      ppl: c.status[i] === V.statuses.OK ? c.ppl[i] : null,
      partial_ppl: c.status[i] === V.statuses.PRUNED ? c.ppl[i] : null,
    }));
  }

  function sortedRows() {
    const {key, asc} = state.sort;
    const sign = asc ? 1 : -1;
    return tableRows().sort((a, b) => {
      const [x, y] = [a[key], b[key]];
      if (x === null || x === undefined) return 1;  // no value: last either way
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : x > y ? 1 : 0) * sign;
    });
  }

  function renderTable() {
    const table = $("candidate-table");
    const {key, asc} = state.sort;
    table.querySelector("thead tr").replaceChildren(...TABLE_COLUMNS.map(([k, label]) => {
      const button = el("button", {type: "button", "data-sort": k}, label);
      button.addEventListener("click", () => {
        state.sort = {key: k, asc: state.sort.key === k ? !state.sort.asc : true};
        renderTable();
      });
      return el("th", {scope: "col", "aria-sort": k === key
        ? (asc ? "ascending" : "descending") : "none"}, button);
    }));
    const rows = sortedRows();
    const fmt = {ppl: fmtPpl, partial_ppl: fmtPpl, cost_tokens: fmtTokens,
      cost_spent_tokens: fmtTokens,
      candidate_id: (v) => String(v).slice(0, 10)};
    table.querySelector("tbody").replaceChildren(...rows.slice(0, MAX_TABLE_ROWS).map((r) =>
      el("tr", {dataset: {status: r.status}}, TABLE_COLUMNS.map(([k]) =>
        el("td", {}, (fmt[k] || ((v) => v ?? "–"))(r[k]))))));
    setText($("table-note"), rows.length > MAX_TABLE_ROWS
      ? `Showing ${MAX_TABLE_ROWS} of ${rows.length} candidates; the downloads hold all.`
      : `${rows.length} candidates.`);
    $("table-csv").disabled = $("table-parquet").disabled = rows.length === 0;
  }

  function csv(rows) {
    const cell = (v) => (v === null || v === undefined ? "" : /[",\n]/.test(String(v))
      ? `"${String(v).replace(/"/g, '""')}"` : String(v));
    return [TABLE_COLUMNS.map(([k]) => k).join(","),
      ...rows.map((r) => TABLE_COLUMNS.map(([k]) => cell(r[k])).join(","))].join("\n") + "\n";
  }

  $("table-csv").addEventListener("click", () =>
    save(new Blob([csv(sortedRows())], {type: "text/csv"}), `${state.selected}.candidates.csv`));
  $("table-parquet").addEventListener("click", async () => {
    try {
      const response = await api(jobPath(state.selected, "/table?format=parquet"));
      save(await response.blob(), `${state.selected}.generations.parquet`);
    } catch (e) {
      setText($("table-note"), `Download failed: ${e.message}`);
    }
  });

  // ---- several jobs on one chart -------------------------------------------------------------

  async function refreshCompare() {
    const names = [...new Set([...state.compare, state.selected].filter(Boolean))];
    const card = document.querySelector('[data-card="compare"]');
    card.hidden = state.compare.size === 0;
    if (card.hidden) return;
    try {
      const curves = await Promise.all(names.map((n) => apiJson(jobPath(n, "/curve"))));
      state.compared = {names, curves};
      drawCompare();
    } catch (e) {
      showError(e);
    }
  }

  function drawCompare() {
    const {names, curves} = state.compared;
    const rows = [];
    curves.forEach((c, j) => c.cost_spent_tokens.forEach((x, i) => {
      if (x === null || c.best_ppl[i] === null) return;
      const row = new Array(names.length + 1).fill(null);
      [row[0], row[j + 1]] = [x, c.best_ppl[i]];
      rows.push(row);
    }));
    const data = columns(rows, names.length + 1);
    draw("compare", {
      scales: {x: {time: false}, y: pplScale(data.slice(1).flat())},
      axes: [axis("cost spent (forward tokens)", {values: (u, v) => v.map(fmtTokens)}),
        axis("best perplexity so far", {size: 60})],
      series: [{label: "cost spent", value: (u, v) => fmtTokens(v)},
        ...names.map((n, j) => ({label: n, stroke: PALETTE[j % PALETTE.length], width: 2,
          spanGaps: true, value: (u, v) => fmtPpl(v),
          points: {show: true, size: 5, fill: PALETTE[j % PALETTE.length]}}))],
    }, data);
  }

  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      for (const [key, chart] of Object.entries(charts)) {
        const container = document.querySelector(`[data-chart="${key}"]`);
        chart.setSize({width: chartWidth(container), height: chartHeight(key)});
      }
    }, 150);
  });

  /** The vocabulary first (asked again until the server answers), then the page. */
  async function start() {
    try {
      V = await apiJson("/api/vocabulary");
    } catch (e) {
      showError(e);
      setTimeout(start, POLL_MS);
      return;
    }
    renderExportButtons();
    if (state.selected) select(state.selected);
    pollJobs();
  }
  start();
})();
