// One job: status and actions, curves, checkpoints, events, result files and the scenario report (polled
// until the job ends).

import { api, download, listAll, seg } from "../api.js";
import { makeChart } from "../charts.js";
import { alertBox, clear, every, fmtBytes, fmtDuration, fmtTime, h, isCurrent, stopPolling, view } from "../dom.js";
import { decodeBase64Blob, renderMarkdown } from "../markdown.js";
import { TERMINAL, badge } from "../widgets.js";

export async function jobView(token, jobId) {
  const events = new Map();       // id → event
  let order = [];                 // event ids, oldest first
  const head = h("div");
  const progressEl = h("div", { class: "progress-line", "aria-live": "polite" });
  const lossChart = makeChart("Loss", ["train loss", "valid loss"], "loss-chart");
  const accChart = makeChart("Token accuracy", ["train accuracy", "valid accuracy"], "acc-chart");
  // reinforcement jobs: the grader's reward, and the last step's sampled completions with theirs
  const rewardChart = makeChart("Reward", ["train reward", "valid reward"], "reward-chart");
  const samplesEl = h("section", { id: "samples" });
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
    const rsteps = [...byStep.keys()].sort((a, b) => a - b).filter((s) => byStep.get(s).train_reward_mean !== undefined
      || byStep.get(s).valid_reward_mean !== undefined);
    const rcol = (k) => rsteps.map((s) => byStep.get(s)[k] ?? null);
    rewardChart.el.hidden = !rsteps.length;
    accChart.el.hidden = rsteps.length > 0;  // no token accuracy in reinforcement
    if (rsteps.length) rewardChart.set([rsteps, rcol("train_reward_mean"), rcol("valid_reward_mean")]);
    const withSamples = [...byStep.values()].filter((v) => v.samples).sort((a, b) => b.step - a.step)[0];
    clear(samplesEl, withSamples ? [h("h2", { text: `Sampled completions (step ${withSamples.step})` }),
      h("table", { class: "grid" }, h("thead", {}, h("tr", {}, h("th", { text: "Completion" }),
        h("th", { text: "Reward" }))), h("tbody", {}, withSamples.samples.map((x) => h("tr", {},
        h("td", { class: "mono", text: x.completion }), h("td", { text: Number(x.reward).toFixed(3) })))))] : []);
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
        ...Object.entries(job.hyperparameters).filter(([, v]) => v !== null)
          .map(([k, v]) => [k.replaceAll("_", " "), typeof v === "object" ? JSON.stringify(v) : String(v)]),
      ].map(([k, v]) => [h("dt", { text: k }), h("dd", { text: String(v) })])));
    let last = null;
    for (const v of byStep.values()) if (v.total_steps && (!last || v.step > last.step)) last = v;
    const eta = job.status === "running" && job.estimated_finish ? ` · ETA ${fmtDuration(job.estimated_finish - Date.now() / 1000)}` : "";
    clear(progressEl, last ? [h("progress", { max: last.total_steps, value: last.step, "aria-label": "steps done" }),
      ` step ${last.step} of ${last.total_steps}${eta}`] : job.status);
  }
  async function drawCheckpoints() {
    const ckpts = await listAll(`/fine_tuning/jobs/${seg(jobId)}/checkpoints`);
    // keep: best — the event that says which evaluation the fine-tuned model is
    const kept = order.map((id) => events.get(id)).filter((e) => e.data && e.data.kind === "kept").pop();
    const keptStep = kept ? kept.data.best_step : null;
    clear(ckptBody, ckpts.length ? ckpts.map((c) => h("tr", c.step_number === keptStep ? { class: "kept" } : {},
      h("td", {}, String(c.step_number), c.step_number === keptStep
        ? h("span", { class: "badge", title: kept.message, text: "best · the model" }) : ""),
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
    if (!isCurrent(token)) return;
    const byStep = drawCurves();
    drawHead(job, byStep);
    drawEvents();
    if (job.status !== lastStatus || !TERMINAL.has(job.status)) await drawCheckpoints();
    if (TERMINAL.has(job.status) && !filesShown) { filesShown = true; await drawFiles(job); }
    lastStatus = job.status;
    if (TERMINAL.has(job.status)) stopPolling();
  }
  clear(view(), head, progressEl,
    h("section", { class: "charts", "aria-label": "Curves" }, lossChart.el, accChart.el, rewardChart.el),
    samplesEl,
    h("h2", { text: "Checkpoints" }),
    h("table", { class: "grid", id: "checkpoints" }, h("thead", {}, h("tr", {},
      ["Step", "Metrics", "Model", ""].map((t) => h("th", { scope: "col", text: t })))), ckptBody),
    extra, report,
    h("h2", { text: "Events" }),
    h("div", { class: "scroll" }, h("table", { class: "grid events", id: "events" }, h("thead", {}, h("tr", {},
      ["Time", "Level", "Message"].map((t) => h("th", { scope: "col", text: t })))), eventList)));
  await tick();
  if (isCurrent(token) && !TERMINAL.has(lastStatus)) every(1500, () => tick().catch(() => {}));
  const onResize = () => { lossChart.resize(); accChart.resize(); };
  window.addEventListener("resize", onResize);
  window.addEventListener("hashchange", () => window.removeEventListener("resize", onResize), { once: true });
}
