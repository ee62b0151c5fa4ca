// slmtune console: a client of the public /v1 API, nothing more. No framework, no build step.
// Every text that comes from the server or the user goes into the page through textContent (the h() helper below
// never parses HTML), so a dataset holding "<script>" shows as those characters. The API key lives in
// sessionStorage and travels only in the Authorization header.
"use strict";

const KEY_STORE = "slmtune.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const SCENARIOS = ["classification", "ner", "translation", "qa", "chat", "creative", "domain"];  // docs/scenarios.md
const scenarioSelect = () => h("select", {}, h("option", { value: "", text: "none (chat or prompt/completion JSONL)" }),
  SCENARIOS.map((n) => h("option", { value: n, text: `${n} records` })));
let timers = [];          // polling timers of the current view, cleared when the view changes
let viewToken = 0;        // bumps on every navigation: late answers for a left view are dropped

// --- DOM ------------------------------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else if (k === "class") el.className = v;
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}
function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
function clear(el, ...children) { el.replaceChildren(); return append(el, children); }
const view = () => document.getElementById("view");
let uid = 0;
const nextId = (p) => `${p}-${++uid}`;
function field(label, control, hint) {
  if (!control.id) control.id = nextId("f");
  return h("div", { class: "field" }, h("label", { for: control.id, text: label }), control,
    hint ? h("span", { class: "hint", text: hint }) : null);
}
function alertBox(msg, kind = "error") {
  return h("div", { class: `alert ${kind}`, role: kind === "error" ? "alert" : "status", text: msg });
}
function fmtTime(t) { return t ? new Date(t * 1000).toLocaleString() : "—"; }
function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / (1 << 20)).toFixed(1)} MB`;
}
function fmtDuration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "—";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}
function badge(status) { return h("span", { class: `badge st-${status}`, text: status.replace("_", " ") }); }
function every(ms, fn) { const t = setInterval(fn, ms); timers.push(t); return t; }

// --- API ------------------------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status; this.param = body?.error?.param; this.code = body?.error?.code;
  }
}
function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}
async function api(path, { method = "GET", json, form, raw = false, signal } = {}) {
  const headers = authHeaders();
  let body = form;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  const r = await fetch(`/v1${path}`, { method, headers, body, signal });
  if (!r.ok) {
    let payload = null;
    try { payload = await r.json(); } catch { /* not JSON */ }
    const err = new ApiError(r.status, payload);
    if (r.status === 401 && path !== "/models") signIn(err.message);
    throw err;
  }
  return raw ? r : r.json();
}
async function listAll(path) {  // follow has_more/after through every page
  const out = [];
  let after = null;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${sep}limit=100${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    out.push(...page.data);
    if (!page.has_more || !page.data.length) return out;
    after = page.data[page.data.length - 1].id;
  }
}
async function download(path, filename, transform) {
  const r = await api(path, { raw: true });
  let blob = await r.blob();
  if (transform) blob = await transform(blob);
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: filename });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
async function baseModels() {
  const models = (await api("/models")).data;
  return models.filter((m) => m.owned_by === "slmtune").map((m) => m.id);
}

// --- sign in ----------------------------------------------------------------------------------------------------
function signIn(message) {
  sessionStorage.removeItem(KEY_STORE);
  stopTimers();
  document.getElementById("sign-out").hidden = true;
  document.getElementById("who").textContent = "";
  const input = h("input", { type: "password", autocomplete: "off", required: true, spellcheck: "false" });
  const status = h("div", { "aria-live": "polite" });
  if (message) status.append(alertBox(message));
  const form = h("form", { class: "card narrow", "aria-labelledby": "signin-title",
    onsubmit: async (e) => {
      e.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_STORE, key);
      try {
        await api("/models");
      } catch (err) {
        sessionStorage.removeItem(KEY_STORE);
        clear(status, alertBox(err.status === 401 ? `The key was refused: ${err.message}` : err.message));
        input.focus();
        return;
      }
      if (!location.hash || location.hash === "#/") location.hash = "#/datasets";
      route();
    } },
    h("h1", { id: "signin-title", text: "Sign in" }),
    h("p", { text: "Enter an API key (slmtune keys create --project NAME). It is kept in this tab only and " +
      "sent as a header with each request." }),
    field("API key", input), status,
    h("button", { type: "submit", class: "primary", text: "Sign in" }));
  clear(view(), form);
  input.focus();
}
async function ensureSignedIn() {
  try {
    await api("/models");
    return true;
  } catch (err) {
    if (err.status === 401) {
      signIn(sessionStorage.getItem(KEY_STORE) ? `The key was refused: ${err.message}` : null);
      return false;
    }
    throw err;
  }
}

// Ids from the page's address or from an answer go into API paths encoded: "#/jobs/..%2Ffiles" must name a job
// called "../files" (which does not exist), never reach another route.
const seg = (id) => encodeURIComponent(String(id));

// --- router -----------------------------------------------------------------------------------------------------
const ROUTES = [  // hash, view, its nav link, the name #view[data-ready] takes once it has rendered
  [/^#\/datasets$/, datasetsView, "datasets", "datasets"],
  [/^#\/new$/, newJobView, "new", "new"],
  [/^#\/jobs$/, jobsView, "jobs", "jobs"],
  [/^#\/jobs\/([^/?]+)$/, jobView, "jobs", "job"],
  [/^#\/playground(?:\?(.*))?$/, playgroundView, "playground", "playground"],
  [/^#\/models$/, modelsView, "models", "models"],
];
function stopPolling() { timers.forEach(clearInterval); timers = []; }
function stopTimers() { stopPolling(); viewToken++; }  // leaving the view: its late answers are dropped too
async function route() {
  stopTimers();
  delete view().dataset.ready;
  const token = viewToken;
  if (!location.hash || location.hash === "#/") { location.replace("#/datasets"); return; }
  if (!(await ensureSignedIn()) || token !== viewToken) return;
  const key = sessionStorage.getItem(KEY_STORE);
  document.getElementById("sign-out").hidden = !key;
  document.getElementById("who").textContent = key ? `key ${key.slice(0, 10)}…` : "no auth";
  for (const [re, fn, nav, ready] of ROUTES) {
    const m = location.hash.match(re);
    if (!m) continue;
    document.querySelectorAll("[data-nav]").forEach((a) => {
      if (a.dataset.nav === nav) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    });
    clear(view(), h("p", { class: "muted", text: "Loading…" }));
    try {
      await fn(token, ...m.slice(1).map((x) => (x === undefined ? x : decodeURIComponent(x))));
      if (token === viewToken) view().dataset.ready = ready;  // rendered (tests wait on this)
    } catch (err) {
      if (err.status !== 401 && token === viewToken) clear(view(), alertBox(err.message));
    }
    return;
  }
  clear(view(), alertBox(`No page at ${location.hash}`));
}

// --- datasets ---------------------------------------------------------------------------------------------------
async function datasetsView(token) {
  const models = await baseModels();
  const modelSel = h("select", {}, models.map((m) => h("option", { value: m, text: m })));
  const scenarioSel = scenarioSelect();
  // the drop zone takes drags; the native file input inside it is the keyboard's way in (Tab, then Enter or Space)
  const picker = h("input", { type: "file", accept: ".jsonl", id: nextId("f") });
  const status = h("div", { "aria-live": "polite", id: "upload-status" });
  const checkPanel = h("section", { id: "check", "aria-label": "File check" });
  const tbody = h("tbody");
  const drop = h("div", { class: "drop", id: "drop",
    ondragover: (e) => { e.preventDefault(); drop.classList.add("over"); },
    ondragleave: () => drop.classList.remove("over"),
    ondrop: (e) => { e.preventDefault(); drop.classList.remove("over"); upload(e.dataTransfer.files); } },
    h("p", {}, h("strong", { text: "Drop a .jsonl file here" }), " or choose one:"),
    h("label", { for: picker.id, class: "visually-hidden", text: "Upload a JSONL file" }), picker);
  picker.addEventListener("change", () => { upload(picker.files); picker.value = ""; });

  async function upload(files) {
    for (const file of files) {
      clear(status, alertBox(`Uploading ${file.name}…`, "info"));
      const form = new FormData();
      form.append("purpose", "fine-tune");
      form.append("file", file, file.name);
      try {
        const f = await api("/files", { method: "POST", form });
        clear(status, alertBox(`Uploaded ${f.filename} as ${f.id}.`, "ok"));
        await refresh();
        await check(f);
      } catch (err) {
        if (err.status !== 401) clear(status, alertBox(`${file.name} was refused: ${err.message}`));
      }
    }
  }
  async function check(f) {
    clear(checkPanel, h("p", { class: "muted", text: `Checking ${f.filename} for ${modelSel.value}…` }));
    const model = encodeURIComponent(modelSel.value);
    const sc = scenarioSel.value ? `&scenario=${scenarioSel.value}` : "";
    const c = await api(`/slmtune/files/${seg(f.id)}/check?model=${model}&preview=3${sc}`);
    if (token !== viewToken) return;
    clear(checkPanel, renderCheck(c));
  }
  async function refresh() {
    const files = await listAll("/files?purpose=fine-tune");
    if (token !== viewToken) return;
    clear(tbody, files.length ? files.map((f) => h("tr", {},
      h("td", {}, h("span", { text: f.filename })), h("td", { class: "mono", text: f.id }),
      h("td", { text: fmtBytes(f.bytes) }), h("td", { text: fmtTime(f.created_at) }),
      h("td", { class: "actions" },
        h("button", { type: "button", text: "Check", "aria-label": `Check ${f.filename}`,
          onclick: () => check(f).catch((e) => clear(checkPanel, alertBox(e.message))) }),
        h("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete ${f.filename}`,
          onclick: async () => {
            if (!confirm(`Delete ${f.filename} (${f.id})?`)) return;
            try { await api(`/files/${seg(f.id)}`, { method: "DELETE" }); await refresh(); }
            catch (e) { clear(status, alertBox(e.message)); }
          } })))) : h("tr", {}, h("td", { colspan: "5", class: "muted", text: "No files yet." })));
  }
  await refresh();
  if (token !== viewToken) return;
  clear(view(),
    h("h1", { text: "Datasets" }),
    h("div", { class: "card" }, drop,
    h("div", { class: "row" }, field("Check for base model", modelSel,
      "Token counts and the preview use this model's tokenizer and chat template."),
    field("File format", scenarioSel, "a scenario's records become chat examples through its prompt template")),
    status),
    checkPanel,
    h("h2", { text: "Files" }),
    h("table", { class: "grid", id: "files" }, h("thead", {}, h("tr", {},
      ["File", "ID", "Size", "Uploaded", ""].map((t) => h("th", { scope: "col", text: t })))), tbody));
}

function renderCheck(c) {
  const out = [h("h2", { text: `Check: ${c.filename}` })];
  out.push(c.ok ? alertBox(`No problems for ${c.model}.`, "ok")
    : alertBox(`${c.n_problems} problem${c.n_problems === 1 ? "" : "s"} for ${c.model}.`));
  for (const w of c.warnings || []) out.push(alertBox(w, "warn"));
  if (c.problems.length) {
    out.push(h("ul", { class: "problems" }, c.problems.map((p) => h("li", {},
      h("span", { class: "loc", text: `line ${p.line}` }), " · ", h("code", { text: p.field }), ": ",
      h("span", { text: p.message })))));
  }
  const stats = Object.entries({ ...Object.fromEntries(Object.entries(c.formats).map(([k, v]) => [`${k} examples`, v])),
    ...c.stats });
  out.push(h("dl", { class: "stats" }, stats.map(([k, v]) => [h("dt", { text: k.replaceAll("_", " ") }),
    h("dd", { text: typeof v === "number" ? v.toLocaleString() : JSON.stringify(v) })])));
  if (c.preview.length) {
    out.push(h("h3", { text: "Preview" }), h("p", { class: "legend" },
      h("mark", { class: "trained", text: "highlighted" }), " text carries loss: the model learns to write it; the rest is context."));
    for (const ex of c.preview) {
      out.push(h("figure", { class: "example" },
        h("figcaption", { text: `line ${ex.line} · ${ex.tokens} tokens, ${ex.trained_tokens} trained` }),
        h("pre", { class: "rendered" }, ex.segments.map((s) => s.trained
          ? h("mark", { class: "trained", text: s.text, title: `${s.tokens} trained tokens` })
          : h("span", { text: s.text })))));
    }
  }
  return out;
}

// --- new job ----------------------------------------------------------------------------------------------------
async function newJobView(token) {
  const [models, files] = await Promise.all([baseModels(), listAll("/files?purpose=fine-tune")]);
  if (token !== viewToken) return;
  const fileOpts = files.map((f) => h("option", { value: f.id, text: `${f.filename} (${f.id})` }));
  const el = {
    model: h("select", { name: "model" }, models.map((m) => h("option", { value: m, text: m }))),
    method: h("select", { name: "method" },
      h("option", { value: "supervised", text: "supervised (SFT, LoRA)" }),
      h("option", { value: "dpo", text: "dpo (preference pairs, LoRA)" }),
      h("option", { value: "reinforcement", text: "reinforcement (not supported yet)", disabled: true })),
    scenario: Object.assign(scenarioSelect(), { name: "scenario" }),
    training: h("select", { name: "training_file", required: true },
      h("option", { value: "", text: files.length ? "— choose —" : "— upload a file first —" }), fileOpts),
    validation: h("select", { name: "validation_file" }, h("option", { value: "", text: "none" }),
      files.map((f) => h("option", { value: f.id, text: `${f.filename} (${f.id})` }))),
    epochs: h("input", { name: "n_epochs", type: "number", min: 1, max: 50, step: 1, placeholder: "auto" }),
    batch: h("input", { name: "batch_size", type: "number", min: 1, max: 256, step: 1, placeholder: "auto" }),
    lrm: h("input", { name: "learning_rate_multiplier", type: "number", min: 0.01, step: "any", placeholder: "auto" }),
    beta: h("input", { name: "beta", type: "number", min: 0.01, max: 2, step: "any", placeholder: "auto" }),
    suffix: h("input", { name: "suffix", maxlength: 64, pattern: "[A-Za-z0-9_\\-]+", placeholder: "optional" }),
    seed: h("input", { name: "seed", type: "number", min: 0, step: 1, placeholder: "random" }),
  };
  const betaField = field("DPO beta", el.beta, "auto = 0.1");
  const planPanel = h("section", { class: "card plan", id: "plan", "aria-live": "polite", "aria-label": "Plan" },
    h("p", { class: "muted", text: "Choose a training file to see the plan." }));
  const status = h("div", { "aria-live": "polite" });

  function body() {
    const hp = {};
    const num = (input, key, int) => { if (input.value !== "") hp[key] = int ? parseInt(input.value, 10) : parseFloat(input.value); };
    num(el.epochs, "n_epochs", true); num(el.batch, "batch_size", true); num(el.lrm, "learning_rate_multiplier", false);
    const kind = el.method.value;
    if (kind === "dpo") num(el.beta, "beta", false);
    const b = { model: el.model.value, training_file: el.training.value,
      method: { type: kind, [kind]: { hyperparameters: hp } } };
    if (el.validation.value) b.validation_file = el.validation.value;
    if (el.suffix.value) b.suffix = el.suffix.value;
    if (el.seed.value !== "") b.seed = parseInt(el.seed.value, 10);
    if (el.scenario.value) b.scenario = el.scenario.value;
    return b;
  }
  let planSeq = 0, debounce = null;
  async function plan() {
    const seq = ++planSeq;
    betaField.hidden = el.method.value !== "dpo";
    if (!el.training.value) return;
    clear(planPanel, h("p", { class: "muted", text: "Planning…" }));
    try {
      const p = await api("/slmtune/plan", { method: "POST", json: body() });
      if (seq !== planSeq || token !== viewToken) return;
      clear(planPanel, renderPlan(p));
    } catch (err) {
      if (seq === planSeq && token === viewToken) clear(planPanel, alertBox(`No plan: ${err.message}`));
    }
  }
  const replan = () => { clearTimeout(debounce); debounce = setTimeout(plan, 350); };
  const form = h("form", { class: "card", id: "new-job", "aria-label": "New fine-tuning job",
    oninput: replan, onchange: replan,
    onsubmit: async (e) => {
      e.preventDefault();
      try {
        const job = await api("/fine_tuning/jobs", { method: "POST", json: body() });
        location.hash = `#/jobs/${job.id}`;
      } catch (err) { clear(status, alertBox(`Not created: ${err.message}`)); }
    } },
    h("fieldset", {}, h("legend", { text: "Model and data" }),
      field("Base model", el.model), field("Method", el.method),
      field("Scenario", el.scenario, "records of a scenario; the job then reports base vs tuned on its metric"),
      field("Training file", el.training), field("Validation file", el.validation, "optional: valid loss and accuracy")),
    h("fieldset", {}, h("legend", { text: "Hyperparameters (empty = auto)" }),
      field("Epochs", el.epochs, "auto = 3, more for small files (≥100 example passes)"),
      field("Batch size", el.batch, "auto = examples ÷ 10, 1 to 8"),
      field("Learning rate multiplier", el.lrm, "× 2e-4; auto = 1, or 5 under 100 examples"),
      betaField,
      field("Suffix", el.suffix, "part of the model name"), field("Seed", el.seed)),
    status,
    h("button", { type: "submit", class: "primary", text: "Create job" }));
  betaField.hidden = true;
  clear(view(), h("h1", { text: "New fine-tuning job" }), h("div", { class: "split" }, form, planPanel));
}

function renderPlan(p) {
  const hp = Object.entries(p.hyperparameters).map(([k, v]) => `${k.replaceAll("_", " ")} ${v}`).join(" · ");
  return [
    h("h2", { text: "Plan" }),
    p.fits ? alertBox("Fits in memory.", "ok") : alertBox(`Does not fit: ${p.reason}`),
    h("dl", { class: "stats" },
      [["Peak memory", `${Math.round(p.peak_memory_mb).toLocaleString()} MB`],
        ["Time", fmtDuration(p.wall_seconds)], ["Steps", p.steps.toLocaleString()],
        ["Tokens", p.tokens_total.toLocaleString()], ["Throughput", `${Math.round(p.tokens_per_second)} tokens/s`],
        ["Trainable", `${p.trainable_params.toLocaleString()} of ${p.total_params.toLocaleString()} parameters`],
        ["Method", `${p.method}, ${p.precision}`], ["Resolved", hp]]
        .map(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })])),
    h("details", {}, h("summary", { text: "Memory breakdown" }),
      h("dl", { class: "stats" }, Object.entries(p.memory_breakdown_mb).map(([k, v]) =>
        [h("dt", { text: k.replaceAll("_", " ") }), h("dd", { text: `${v.toFixed(1)} MB` })]))),
    p.notes.length ? h("ul", { class: "notes" }, p.notes.map((n) => h("li", { text: n }))) : null,
  ];
}

// --- jobs -------------------------------------------------------------------------------------------------------
function latestMetrics(events) {
  return events.find((e) => e.type === "metrics" && e.data && e.data.total_steps);
}
async function jobsView(token) {
  const tbody = h("tbody");
  async function refresh() {
    const jobs = await listAll("/fine_tuning/jobs");
    const progress = {};
    await Promise.all(jobs.filter((j) => j.status === "running").map(async (j) => {
      const ev = (await api(`/fine_tuning/jobs/${seg(j.id)}/events?limit=20`)).data;
      const m = latestMetrics(ev);
      if (m) progress[j.id] = m.data;
    }));
    if (token !== viewToken) return;
    clear(tbody, jobs.length ? jobs.map((j) => {
      const p = progress[j.id];
      const pct = j.status === "succeeded" ? 100 : p ? Math.round((100 * p.step) / p.total_steps) : 0;
      return h("tr", { "data-job": j.id },
        h("td", {}, h("a", { href: `#/jobs/${j.id}`, class: "mono", text: j.id })),
        h("td", {}, badge(j.status)), h("td", { text: j.model }),
        h("td", {}, h("progress", { max: 100, value: pct, "aria-label": `${pct}% done` }), ` ${pct}%`),
        h("td", { text: j.status === "running" && j.estimated_finish
          ? fmtDuration(j.estimated_finish - Date.now() / 1000) : "—" }),
        h("td", { text: fmtTime(j.created_at) }),
        h("td", { class: "mono", text: j.fine_tuned_model || "" }));
    }) : h("tr", {}, h("td", { colspan: "7", class: "muted" }, "No jobs yet. ", h("a", { href: "#/new", text: "Create one" }))));
    return jobs;
  }
  await refresh();
  if (token !== viewToken) return;
  clear(view(), h("div", { class: "titlebar" }, h("h1", { text: "Fine-tuning jobs" }),
    h("a", { class: "button primary", href: "#/new", text: "New job" })),
  h("table", { class: "grid", id: "jobs" }, h("thead", {}, h("tr", {},
    ["Job", "Status", "Base model", "Progress", "ETA", "Created", "Fine-tuned model"].map((t) => h("th", { scope: "col", text: t })))),
  tbody));
  every(3000, () => refresh().catch(() => {}));
}

function makeChart(title, series, id) {
  const box = h("figure", { class: "chart", id, "data-points": "0" }, h("figcaption", { text: title }));
  const width = () => Math.max(280, Math.min(620, box.clientWidth || 560));
  const colors = ["#2563eb", "#dc2626", "#059669"];
  let plot = null;
  return {
    el: box,
    set(data) {
      const points = data[0].length;
      box.dataset.points = String(points);
      if (!points) return;
      if (!plot) {
        plot = new uPlot({ width: width(), height: 220, scales: { x: { time: false } },
          axes: [{ label: "step" }, {}],
          series: [{ label: "step" }, ...series.map((s, i) => ({ label: s, stroke: colors[i], width: 2, spanGaps: true,
            points: { show: points < 60 } }))] }, data, box);
      } else {
        plot.setData(data);
      }
    },
    resize() { if (plot) plot.setSize({ width: width(), height: 220 }); },
  };
}

async function jobView(token, jobId) {
  const events = new Map();       // id → event
  let order = [];                 // event ids, oldest first
  const head = h("div");
  const progressEl = h("div", { class: "progress-line", "aria-live": "polite" });
  const lossChart = makeChart("Loss", ["train loss", "valid loss"], "loss-chart");
  const accChart = makeChart("Token accuracy", ["train accuracy", "valid accuracy"], "acc-chart");
  const eventList = h("tbody");
  const ckptBody = h("tbody");
  const extra = h("div");
  const report = h("section", { id: "report" });
  const status = h("div", { "aria-live": "polite" });
  let lastStatus = null, filesShown = false;

  async function loadEvents() {
    const fresh = [];
    let after = null;
    for (;;) {  // newest first: page back until an event already held
      const page = await api(`/fine_tuning/jobs/${seg(jobId)}/events?limit=100${after ? `&after=${seg(after)}` : ""}`);
      let known = false;
      for (const e of page.data) { if (events.has(e.id)) { known = true; break; } fresh.push(e); }
      if (known || !page.has_more || !page.data.length) break;
      after = page.data[page.data.length - 1].id;
    }
    for (const e of fresh.reverse()) { events.set(e.id, e); order.push(e.id); }
    return fresh.length;
  }
  function drawCurves() {
    const byStep = new Map();
    for (const id of order) {
      const e = events.get(id);
      if (e.type !== "metrics" || !e.data || e.data.step === undefined) continue;
      byStep.set(e.data.step, { ...(byStep.get(e.data.step) || {}), ...e.data });
    }
    const steps = [...byStep.keys()].sort((a, b) => a - b).filter((s) => byStep.get(s).train_loss !== undefined
      || byStep.get(s).valid_loss !== undefined);
    const col = (k) => steps.map((s) => byStep.get(s)[k] ?? null);
    lossChart.set([steps, col("train_loss"), col("valid_loss")]);
    accChart.set([steps, col("train_mean_token_accuracy"), col("valid_mean_token_accuracy")]);
    return byStep;
  }
  function drawEvents() {
    clear(eventList, order.slice().reverse().map((id) => {
      const e = events.get(id);
      return h("tr", { class: `lvl-${e.level}` }, h("td", { text: fmtTime(e.created_at) }),
        h("td", { text: e.level }), h("td", { text: e.message }));
    }));
  }
  async function act(verb) {
    try { await api(`/fine_tuning/jobs/${seg(jobId)}/${verb}`, { method: "POST" }); clear(status); await tick(); }
    catch (err) { clear(status, alertBox(err.message)); }
  }
  function drawHead(job, byStep) {
    const active = !TERMINAL.has(job.status);
    clear(head,
      h("div", { class: "titlebar" }, h("h1", {}, "Job ", h("span", { class: "mono", text: job.id })),
        h("span", { id: "job-status" }, badge(job.status))),
      h("div", { class: "toolbar" },
        h("button", { type: "button", text: "Cancel", class: "danger", disabled: !active, onclick: () => {
          if (confirm(`Cancel ${job.id}?`)) act("cancel");
        } }),
        h("button", { type: "button", text: "Pause", disabled: job.status !== "running", onclick: () => act("pause") }),
        h("button", { type: "button", text: "Resume", disabled: job.status !== "paused", onclick: () => act("resume") }),
        job.fine_tuned_model ? h("a", { class: "button primary", id: "try-model",
          href: `#/playground?model=${encodeURIComponent(job.fine_tuned_model)}`, text: "Try in playground" }) : null,
        job.fine_tuned_model ? h("button", { type: "button", text: "Download adapter", onclick: () =>
          download(`/slmtune/models/${encodeURIComponent(job.fine_tuned_model)}/adapter`, `${job.id}-adapter.zip`)
            .catch((e) => clear(status, alertBox(e.message))) }) : null),
      status,
      job.error ? alertBox(`${job.error.code}: ${job.error.message}`) : null,
      h("dl", { class: "stats" }, [
        ["Base model", job.model], ["Fine-tuned model", job.fine_tuned_model || "—"],
        ["Method", job.method.type], ["Scenario", job.method.scenario || "none"], ["Training file", job.training_file],
        ["Validation file", job.validation_file || "none"], ["Seed", job.seed],
        ["Created", fmtTime(job.created_at)], ["Finished", fmtTime(job.finished_at)],
        ["Trained tokens", job.trained_tokens ? job.trained_tokens.toLocaleString() : "—"],
        ...Object.entries(job.hyperparameters).map(([k, v]) => [k.replaceAll("_", " "), String(v)]),
      ].map(([k, v]) => [h("dt", { text: k }), h("dd", { text: String(v) })])));
    let last = null;
    for (const v of byStep.values()) if (v.total_steps && (!last || v.step > last.step)) last = v;
    const eta = job.status === "running" && job.estimated_finish ? ` · ETA ${fmtDuration(job.estimated_finish - Date.now() / 1000)}` : "";
    clear(progressEl, last ? [h("progress", { max: last.total_steps, value: last.step, "aria-label": "steps done" }),
      ` step ${last.step} of ${last.total_steps}${eta}`] : job.status);
  }
  async function drawCheckpoints() {
    const ckpts = await listAll(`/fine_tuning/jobs/${seg(jobId)}/checkpoints`);
    clear(ckptBody, ckpts.length ? ckpts.map((c) => h("tr", {},
      h("td", { text: c.step_number }),
      h("td", { text: Object.entries(c.metrics).filter(([k, v]) => v !== null && k !== "step")
        .map(([k, v]) => `${k.replaceAll("_", " ")} ${typeof v === "number" ? v.toFixed(4) : v}`).join(" · ") }),
      h("td", { class: "mono", text: c.fine_tuned_model_checkpoint }),
      h("td", { class: "actions" },
        h("a", { href: `#/playground?model=${encodeURIComponent(c.fine_tuned_model_checkpoint)}`, text: "Chat" }),
        h("button", { type: "button", text: "Adapter", "aria-label": `Download the adapter of step ${c.step_number}`,
          onclick: () => download(`/slmtune/models/${encodeURIComponent(c.fine_tuned_model_checkpoint)}/adapter`,
            `${jobId}-step-${c.step_number}.zip`).catch((e) => clear(status, alertBox(e.message))) }))))
      : h("tr", {}, h("td", { colspan: "4", class: "muted", text: "No checkpoints yet." })));
  }
  async function drawFiles(job) {
    const rows = await Promise.all(job.result_files.map((id) => api(`/files/${seg(id)}`)));
    clear(extra, rows.length ? [h("h2", { text: "Result files" }), h("ul", { class: "files" }, rows.map((f) =>
      h("li", {}, h("button", { type: "button", text: `Download ${f.filename}`, onclick: () =>
        download(`/files/${seg(f.id)}/content`, f.filename, f.filename.endsWith(".csv") ? decodeBase64Blob : null)
          .catch((e) => clear(status, alertBox(e.message))) }), ` ${fmtBytes(f.bytes)}`)))] : []);
    const md = rows.find((f) => f.filename === "report.md");
    if (md) await drawReport(md, rows);
  }
  async function drawReport(md, rows) {
    const text = await (await api(`/files/${seg(md.id)}/content`, { raw: true })).text();
    const images = {};
    for (const f of rows.filter((r) => r.filename.endsWith(".png"))) {
      images[f.filename] = URL.createObjectURL(await (await api(`/files/${seg(f.id)}/content`, { raw: true })).blob());
    }
    clear(report, h("h2", { text: "Scenario report" }), renderMarkdown(text, images));
  }
  async function tick() {
    const job = await api(`/fine_tuning/jobs/${seg(jobId)}`);
    await loadEvents();
    if (token !== viewToken) return;
    const byStep = drawCurves();
    drawHead(job, byStep);
    drawEvents();
    if (job.status !== lastStatus || !TERMINAL.has(job.status)) await drawCheckpoints();
    if (TERMINAL.has(job.status) && !filesShown) { filesShown = true; await drawFiles(job); }
    lastStatus = job.status;
    if (TERMINAL.has(job.status)) stopPolling();
  }
  clear(view(), head, progressEl,
    h("section", { class: "charts", "aria-label": "Curves" }, lossChart.el, accChart.el),
    h("h2", { text: "Checkpoints" }),
    h("table", { class: "grid", id: "checkpoints" }, h("thead", {}, h("tr", {},
      ["Step", "Metrics", "Model", ""].map((t) => h("th", { scope: "col", text: t })))), ckptBody),
    extra, report,
    h("h2", { text: "Events" }),
    h("div", { class: "scroll" }, h("table", { class: "grid events", id: "events" }, h("thead", {}, h("tr", {},
      ["Time", "Level", "Message"].map((t) => h("th", { scope: "col", text: t })))), eventList)));
  await tick();
  if (token === viewToken && !TERMINAL.has(lastStatus)) every(1500, () => tick().catch(() => {}));
  const onResize = () => { lossChart.resize(); accChart.resize(); };
  window.addEventListener("resize", onResize);
  window.addEventListener("hashchange", () => window.removeEventListener("resize", onResize), { once: true });
}
async function decodeBase64Blob(blob) {
  const text = (await blob.text()).trim();
  try {
    const bin = atob(text);
    return new Blob([Uint8Array.from(bin, (c) => c.charCodeAt(0))], { type: "text/csv" });
  } catch { return blob; }
}

// A small Markdown subset for the scenario report (headings, paragraphs, lists, tables, images): built as DOM
// nodes with textContent, so nothing in the report is ever parsed as HTML.
function renderMarkdown(text, images) {
  const out = h("div", { class: "markdown" });
  const lines = text.split("\n");
  let i = 0;
  const inline = (s) => {
    const parts = [];
    const re = /!\[([^\]]*)\]\(([^)]+)\)|\*\*([^*]+)\*\*|`([^`]+)`/g;
    let last = 0, m;
    while ((m = re.exec(s))) {
      if (m.index > last) parts.push(s.slice(last, m.index));
      if (m[2] !== undefined) {
        const src = images[m[2].split("/").pop()];
        parts.push(src ? h("img", { src, alt: m[1] }) : `[${m[1]}]`);
      } else if (m[3] !== undefined) parts.push(h("strong", { text: m[3] }));
      else parts.push(h("code", { text: m[4] }));
      last = re.lastIndex;
    }
    parts.push(s.slice(last));
    return parts;
  };
  while (i < lines.length) {
    const line = lines[i];
    const hm = line.match(/^(#{1,4})\s+(.*)$/);
    if (hm) { out.append(h(`h${Math.min(6, hm[1].length + 2)}`, {}, inline(hm[2]))); i++; continue; }
    if (line.startsWith("|")) {
      const rows = [];
      while (i < lines.length && lines[i].startsWith("|")) { rows.push(lines[i]); i++; }
      const cells = (r) => r.replace(/^\||\|$/g, "").split("|").map((c) => c.trim());
      const body = rows.filter((r) => !/^\|\s*:?-{2,}/.test(r));
      out.append(h("table", { class: "grid" }, h("thead", {}, h("tr", {}, cells(body[0]).map((c) => h("th", {}, inline(c))))),
        h("tbody", {}, body.slice(1).map((r) => h("tr", {}, cells(r).map((c) => h("td", {}, inline(c))))))));
      continue;
    }
    if (/^\s*[-*]\s+/.test(line)) {
      const ul = h("ul");
      while (i < lines.length && /^\s*[-*]\s+/.test(lines[i])) { ul.append(h("li", {}, inline(lines[i].replace(/^\s*[-*]\s+/, "")))); i++; }
      out.append(ul);
      continue;
    }
    if (line.trim()) out.append(h("p", {}, inline(line)));
    i++;
  }
  return out;
}

// --- playground -------------------------------------------------------------------------------------------------
async function playgroundView(token, query) {
  const params = new URLSearchParams(query || "");
  const models = (await api("/models")).data.map((m) => m.id);
  if (token !== viewToken) return;
  const wanted = params.get("model");
  const baseOf = (id) => (id && id.startsWith("ft:") ? id.split(":")[1] : null);
  const select = (chosen, allowNone) => h("select", {}, allowNone ? h("option", { value: "", text: "— none —" }) : null,
    models.map((m) => h("option", { value: m, text: m, selected: m === chosen })));
  const selA = select(wanted && models.includes(wanted) ? wanted : models[0], false);
  const selB = select(wanted && models.includes(baseOf(wanted)) ? baseOf(wanted) : "", true);
  const system = h("textarea", { rows: 2, placeholder: "optional system message" });
  const prompt = h("textarea", { rows: 3, required: true, placeholder: "Ask something (Ctrl+Enter sends)" });
  const maxTokens = h("input", { type: "number", min: 1, max: 4096, value: 64 });
  const temperature = h("input", { type: "number", min: 0, max: 2, step: 0.1, value: 0 });
  const panes = [makePane("A", selA), makePane("B", selB)];
  const sendBtn = h("button", { type: "submit", class: "primary", text: "Send" });
  let controllers = [];

  function makePane(name, sel) {
    const log = h("div", { class: "chatlog", id: `pane-${name}`, "aria-live": "polite", "aria-label": `Replies of model ${name}` });
    return { name, sel, log, history: [], el: h("section", { class: "card pane" }, field(`Model ${name}`, sel), log) };
  }
  async function stream(pane, text) {
    const model = pane.sel.value;
    if (!model) return;
    pane.history.push({ role: "user", content: text });
    const out = h("div", { class: "msg assistant", "data-state": "streaming" });
    pane.log.append(h("div", { class: "msg user", text }), out);
    const messages = [...(system.value.trim() ? [{ role: "system", content: system.value }] : []), ...pane.history];
    const ctl = new AbortController();
    controllers.push(ctl);
    let reply = "";
    try {
      const r = await api("/chat/completions", { method: "POST", raw: true, signal: ctl.signal, json: {
        model, messages, stream: true, max_completion_tokens: parseInt(maxTokens.value, 10) || 64,
        temperature: parseFloat(temperature.value) || 0 } });
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = chunk.choices?.[0]?.delta?.content;
          if (delta) { reply += delta; out.textContent = reply; pane.log.scrollTop = pane.log.scrollHeight; }
        }
      }
      out.dataset.state = "done";
      pane.history.push({ role: "assistant", content: reply });
    } catch (err) {
      out.dataset.state = "error";
      if (err.name !== "AbortError") out.replaceChildren(alertBox(err.message));
      pane.history.pop();
    }
  }
  const form = h("form", { class: "card", id: "playground-form", "aria-label": "Prompt",
    onsubmit: async (e) => {
      e.preventDefault();
      const text = prompt.value.trim();
      if (!text) return;
      prompt.value = "";
      sendBtn.disabled = true;
      try { await Promise.all(panes.map((p) => stream(p, text))); } finally { sendBtn.disabled = false; controllers = []; }
    } },
    field("System", system), field("Message", prompt),
    h("div", { class: "row" }, field("Max tokens", maxTokens), field("Temperature", temperature)),
    h("div", { class: "toolbar" }, sendBtn,
      h("button", { type: "button", text: "Stop", onclick: () => controllers.forEach((c) => c.abort()) }),
      h("button", { type: "button", text: "Clear", onclick: () => panes.forEach((p) => { p.history = []; clear(p.log); }) })));
  prompt.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit(); });
  clear(view(), h("h1", { text: "Playground" }),
    h("p", { class: "muted", text: "Chat with a base model, a tuned model or a checkpoint; choose a second model to compare replies to the same prompt side by side." }),
    form, h("div", { class: "panes" }, panes.map((p) => p.el)));
  window.addEventListener("hashchange", () => controllers.forEach((c) => c.abort()), { once: true });
  prompt.focus();
}

// --- models -----------------------------------------------------------------------------------------------------
function snippets(id) {
  const base = `${location.origin}/v1`;
  const curl = `curl ${base}/chat/completions \\\n  -H "Authorization: Bearer $SLMTUNE_API_KEY" \\\n` +
    `  -H "Content-Type: application/json" \\\n  -d '${JSON.stringify({ model: id, messages: [{ role: "user", content: "Hello!" }] })
      .replaceAll("'", "'\\''")}'`;
  const py = `from openai import OpenAI\n\nclient = OpenAI(base_url="${base}", api_key=os.environ["SLMTUNE_API_KEY"])\n` +
    `reply = client.chat.completions.create(\n    model=${JSON.stringify(id)},\n` +
    `    messages=[{"role": "user", "content": "Hello!"}],\n)\nprint(reply.choices[0].message.content)`;
  return { curl, py: `import os\n${py}` };
}
async function modelsView(token) {
  const tbody = h("tbody");
  const status = h("div", { "aria-live": "polite" });
  async function refresh() {
    const models = (await api("/models")).data;
    if (token !== viewToken) return;
    clear(tbody, models.map((m) => {
      const s = snippets(m.id);
      const own = m.owned_by !== "slmtune";
      const tuned = own && !m.id.includes(":ckpt-step-");
      return h("tr", { "data-model": m.id },
        h("td", {}, h("span", { class: "mono", text: m.id }),
          h("details", { class: "snippet" }, h("summary", { text: "Call it" }),
            h("p", { text: "curl" }), h("pre", {}, h("code", { text: s.curl })),
            h("p", { text: "Python (openai SDK)" }), h("pre", {}, h("code", { text: s.py })))),
        h("td", { text: own ? (tuned ? "fine-tuned" : "checkpoint") : "base" }),
        h("td", { text: m.owned_by }),
        h("td", { class: "actions" },
          h("a", { href: `#/playground?model=${encodeURIComponent(m.id)}`, text: "Chat" }),
          tuned ? h("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete ${m.id}`,
            onclick: async () => {
              if (!confirm(`Delete ${m.id}? Its checkpoints go with it.`)) return;
              try { await api(`/models/${encodeURIComponent(m.id)}`, { method: "DELETE" });
                await refresh(); clear(status, alertBox(`Deleted ${m.id}.`, "ok")); }
              catch (e) { clear(status, alertBox(e.message)); }
            } }) : null));
    }));
  }
  await refresh();
  if (token !== viewToken) return;
  clear(view(), h("h1", { text: "Models" }), status,
    h("table", { class: "grid", id: "models" }, h("thead", {}, h("tr", {},
      ["Model", "Kind", "Owner", ""].map((t) => h("th", { scope: "col", text: t })))), tbody));
}

// --- start ------------------------------------------------------------------------------------------------------
window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-out").addEventListener("click", () => { signIn(null); });
  route();
});
