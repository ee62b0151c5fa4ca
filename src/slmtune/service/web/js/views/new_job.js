// New job: the form, and the plan (memory, time, resolved hyperparameters) as it is filled in.

import { api, baseModels, listAll, scenarioNames } from "../api.js";
import { alertBox, clear, field, fmtDuration, h, isCurrent, view } from "../dom.js";
import { scenarioSelect } from "../widgets.js";

export async function newJobView(token) {
  const [models, files, scenarios] = await Promise.all([baseModels(), listAll("/files?purpose=fine-tune"),
    scenarioNames()]);
  if (!isCurrent(token)) return;
  const fileOpts = files.map((f) => h("option", { value: f.id, text: `${f.filename} (${f.id})` }));
  const el = {
    model: h("select", { name: "model" }, models.map((m) => h("option", { value: m, text: m }))),
    method: h("select", { name: "method" },
      h("option", { value: "supervised", text: "supervised (SFT, LoRA)" }),
      h("option", { value: "dpo", text: "dpo (preference pairs, LoRA)" }),
      h("option", { value: "reinforcement", text: "reinforcement (through the API: it needs a grader)", disabled: true })),
    scenario: Object.assign(scenarioSelect(scenarios), { name: "scenario" }),
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
    sweep: h("input", { name: "sweep", maxlength: 64, placeholder: "optional: one job per combination" }),
    sweepLrm: h("input", { name: "sweep_lrm", placeholder: "e.g. 0.5, 1, 2" }),
    sweepEpochs: h("input", { name: "sweep_epochs", placeholder: "e.g. 2, 4" }),
  };
  const submit = h("button", { type: "submit", class: "primary", text: "Create job" });
  const betaField = field("DPO beta", el.beta, "auto = 0.1");
  const planPanel = h("section", { class: "card plan", id: "plan", "aria-live": "polite", "aria-label": "Plan" },
    h("p", { class: "muted", text: "Choose a training file to see the plan." }));
  const status = h("div", { "aria-live": "polite" });

  // A sweep: the jobs of every combination of the listed values (the single fields' values elsewhere), each with
  // metadata {"sweep": NAME}; the Sweeps page compares them.
  function list(input, int) {
    return input.value.split(",").map((x) => x.trim()).filter(Boolean).map((x) => (int ? parseInt(x, 10) : parseFloat(x)));
  }
  function grid() {
    if (!el.sweep.value.trim()) return null;
    let combos = [{}];
    for (const [key, values] of [["learning_rate_multiplier", list(el.sweepLrm, false)], ["n_epochs", list(el.sweepEpochs, true)]]) {
      if (values.some((v) => Number.isNaN(v))) throw new Error(`Sweep: ${key.replaceAll("_", " ")} must be numbers separated by commas`);
      if (values.length) combos = combos.flatMap((c) => values.map((v) => ({ ...c, [key]: v })));
    }
    return combos;
  }
  function label() {
    let n = null;
    try { n = grid(); } catch { n = null; }
    submit.textContent = n ? `Create ${n.length} job${n.length === 1 ? "" : "s"}` : "Create job";
  }
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
      if (seq !== planSeq || !isCurrent(token)) return;
      clear(planPanel, renderPlan(p));
    } catch (err) {
      if (seq === planSeq && isCurrent(token)) clear(planPanel, alertBox(`No plan: ${err.message}`));
    }
  }
  const replan = () => { clearTimeout(debounce); debounce = setTimeout(plan, 350); };
  const form = h("form", { class: "card", id: "new-job", "aria-label": "New fine-tuning job",
    oninput: () => { label(); replan(); }, onchange: replan,
    onsubmit: async (e) => {
      e.preventDefault();
      let combos;
      try { combos = grid(); } catch (err) { clear(status, alertBox(err.message)); return; }
      const created = [];
      try {
        for (const combo of combos || [null]) {
          const b = body();
          if (combo) {
            Object.assign(b.method[b.method.type].hyperparameters, combo);
            b.metadata = { sweep: el.sweep.value.trim() };
          }
          created.push((await api("/fine_tuning/jobs", { method: "POST", json: b })).id);
        }
        location.hash = combos ? `#/sweeps/${encodeURIComponent(el.sweep.value.trim())}` : `#/jobs/${created[0]}`;
      } catch (err) {
        clear(status, alertBox(`Not created: ${err.message}` + (created.length ? ` (created before it: ${created.join(", ")})` : "")));
      }
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
    h("fieldset", {}, h("legend", { text: "Sweep (optional)" }),
      field("Sweep name", el.sweep, "the jobs share metadata.sweep; the Sweeps page compares them"),
      field("Multipliers to try", el.sweepLrm, "learning-rate multipliers, comma-separated; replace the single value"),
      field("Epoch counts to try", el.sweepEpochs, "comma-separated; every combination is one job")),
    status, submit);
  betaField.hidden = true;
  label();
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
