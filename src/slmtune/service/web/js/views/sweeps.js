// Sweeps: the jobs that share a `metadata.sweep` name, compared — the settings that differ between them, the
// figure of the model each produced, their validation curves overlaid, the best marked. Any client makes one by
// creating jobs with metadata {"sweep": NAME}; the New job page does it for a grid of values.

import { api, listAll, seg } from "../api.js";
import { makeOverlay } from "../charts.js";
import { clear, every, fmtTime, h, isCurrent, view } from "../dom.js";
import { TERMINAL, badge } from "../widgets.js";

export const sweepPath = (name) => `/fine_tuning/jobs?${encodeURIComponent("metadata[sweep]")}=${encodeURIComponent(name)}`;
const lowerIsBetter = (metric) => /loss$/.test(metric) || metric === "valid_unparseable";

export async function sweepsView(token) {
  const jobs = await listAll("/fine_tuning/jobs");
  if (!isCurrent(token)) return;
  const sweeps = new Map();  // name → its jobs (newest first, as listed)
  for (const j of jobs) {
    const name = j.metadata && j.metadata.sweep;
    if (name) sweeps.set(name, [...(sweeps.get(name) || []), j]);
  }
  const count = (list, status) => list.filter((j) => j.status === status).length;
  const rows = [...sweeps].map(([name, list]) => h("tr", { "data-sweep": name },
    h("td", {}, h("a", { href: `#/sweeps/${encodeURIComponent(name)}`, text: name })),
    h("td", { text: String(list.length) }),
    h("td", { text: ["succeeded", "running", "queued", "failed", "cancelled"]
      .map((s) => [s, count(list, s)]).filter(([, n]) => n).map(([s, n]) => `${n} ${s}`).join(", ") }),
    h("td", { text: fmtTime(Math.min(...list.map((j) => j.created_at))) })));
  clear(view(), h("div", { class: "titlebar" }, h("h1", { text: "Sweeps" }),
    h("a", { class: "button primary", href: "#/new", text: "New sweep" })),
  h("p", { class: "muted", text: "A sweep is the jobs that share metadata.sweep: start one from New job (Sweep), or "
    + "from any client with metadata={\"sweep\": NAME} on each job." }),
  h("table", { class: "grid", id: "sweeps" }, h("thead", {}, h("tr", {},
    ["Sweep", "Trials", "Status", "Started"].map((t) => h("th", { scope: "col", text: t })))),
  h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: "4", class: "muted", text: "No sweeps yet." })))));
}

// What one job contributes to its sweep: its evaluations by step, the step its model holds, its settings.
async function trialOf(job) {
  const events = await listAll(`/fine_tuning/jobs/${seg(job.id)}/events`);
  const byStep = new Map();
  let kept = null;
  for (const e of events) {
    const d = e.data || {};
    if (e.type === "metrics" && d.step !== undefined) byStep.set(d.step, { ...d, ...(byStep.get(d.step) || {}) });
    if (d.kind === "kept") kept = d.best_step;
  }
  const hp = (job.method && job.method[job.method.type] && job.method[job.method.type].hyperparameters) || {};
  return { job, byStep, kept, hp };
}

function settings(hp) {
  const out = {};
  for (const [k, v] of Object.entries(hp)) out[k] = v !== null && typeof v === "object" ? JSON.stringify(v) : String(v);
  return out;
}

// The figure of the model a trial produced: at its kept step (keep: best), else at its last evaluation.
function figure(trial, metric) {
  const steps = [...trial.byStep.keys()].filter((s) => trial.byStep.get(s)[metric] != null).sort((a, b) => a - b);
  if (!steps.length) return null;
  const step = trial.kept !== null && steps.includes(trial.kept) ? trial.kept : steps[steps.length - 1];
  return { step, value: trial.byStep.get(step)[metric] };
}

export async function sweepView(token, name) {
  const table = h("table", { class: "grid", id: "trials" });
  const chart = makeOverlay("Curves", "sweep-chart");
  const metricSelect = h("select", { id: "sweep-metric", "aria-label": "Metric" });
  const summary = h("p", { id: "sweep-best", "aria-live": "polite" });
  let trials = [], jobs = [], picked = null;  // picked: the metric the user chose (else valid_loss when there is one)
  const ended = new Map();  // job id → its trial, once the job has ended (its events no longer change)

  function draw() {
    const metrics = new Set();
    for (const t of trials) for (const d of t.byStep.values()) for (const k of Object.keys(d)) {
      if ((k.startsWith("valid_") || k.startsWith("full_valid_") || k === "train_loss") && typeof d[k] === "number") metrics.add(k);
    }
    const names = [...metrics].sort((a, b) => (a === "valid_loss" ? -1 : b === "valid_loss" ? 1 : a.localeCompare(b)));
    const chosen = names.includes(picked) ? picked : names[0] || "valid_loss";
    clear(metricSelect, names.map((m) => h("option", { value: m, text: m.replaceAll("_", " "), selected: m === chosen })));
    const lower = lowerIsBetter(chosen);
    const figures = trials.map((t) => (t.job.status === "succeeded" ? figure(t, chosen) : null));
    let best = -1;
    figures.forEach((f, i) => {
      if (f && (best < 0 || (lower ? f.value < figures[best].value : f.value > figures[best].value))) best = i;
    });
    const all = trials.map((t) => settings(t.hp));
    const keys = [...new Set(all.flatMap(Object.keys))].filter((k) => new Set(all.map((s) => s[k])).size > 1);
    clear(table, h("thead", {}, h("tr", {}, ["Trial", "Status", ...keys.map((k) => k.replaceAll("_", " ")),
      `${chosen.replaceAll("_", " ")} of the model`, "at step", "best evaluation", "Fine-tuned model"]
      .map((c) => h("th", { scope: "col", text: c })))),
    h("tbody", {}, trials.map((t, i) => {
      const f = figures[i];
      const evals = [...t.byStep.entries()].filter(([, d]) => d[chosen] != null);
      const top = evals.reduce((a, b) => (!a || (lower ? b[1][chosen] < a[1][chosen] : b[1][chosen] > a[1][chosen]) ? b : a), null);
      return h("tr", { "data-job": t.job.id, class: i === best ? "best" : "" },
        h("td", {}, h("a", { href: `#/jobs/${t.job.id}`, class: "mono", text: t.job.id }),
          i === best ? h("span", { class: "badge best-mark", text: "best" }) : null),
        h("td", {}, badge(t.job.status)),
        ...keys.map((k) => h("td", { class: "mono", text: all[i][k] ?? "" })),
        h("td", { class: "metric", text: f ? Number(f.value).toFixed(4) : "—" }),
        h("td", { text: f ? String(f.step) + (t.kept !== null ? " (kept)" : "") : "" }),
        h("td", { text: top ? `${Number(top[1][chosen]).toFixed(4)} @ ${top[0]}` : "" }),
        h("td", { class: "mono", text: t.job.fine_tuned_model || "" }));
    })));
    const steps = [...new Set(trials.flatMap((t) => [...t.byStep.keys()].filter((s) => t.byStep.get(s)[chosen] != null)))]
      .sort((a, b) => a - b);
    chart.set(chosen.replaceAll("_", " "), trials.map((t) => t.job.id),
      [steps, ...trials.map((t) => steps.map((s) => t.byStep.get(s)?.[chosen] ?? null))], best < 0 ? null : best);
    summary.textContent = best < 0 ? "No trial has finished with this metric yet."
      : `Best: ${trials[best].job.id} (${chosen.replaceAll("_", " ")} ${Number(figures[best].value).toFixed(4)} at step `
        + `${figures[best].step}, ${lower ? "lowest" : "highest"} of ${figures.filter(Boolean).length} finished).`;
  }
  async function refresh() {
    jobs = await listAll(sweepPath(name));
    const fresh = await Promise.all(jobs.map((j) => ended.get(j.id) || trialOf(j)));
    for (const t of fresh) if (TERMINAL.has(t.job.status)) ended.set(t.job.id, t);
    if (!isCurrent(token)) return;
    trials = fresh.reverse();  // oldest first: the order they were created in
    draw();
  }
  await refresh();
  if (!isCurrent(token)) return;
  metricSelect.addEventListener("change", () => { picked = metricSelect.value; draw(); });
  clear(view(), h("div", { class: "titlebar" }, h("h1", {}, "Sweep ", h("span", { class: "mono", text: name })),
    h("label", {}, "Metric ", metricSelect)),
  jobs.length ? null : h("p", { class: "muted", text: "No job has this sweep name (metadata.sweep)." }),
  summary, table, chart.el);
  every(4000, () => { if (jobs.some((j) => !TERMINAL.has(j.status))) refresh().catch(() => {}); });
}
