// Jobs: the list, with progress and ETA of the running ones (polled).

import { api, listAll, seg } from "../api.js";
import { clear, every, fmtDuration, fmtTime, h, isCurrent, view } from "../dom.js";
import { badge } from "../widgets.js";

function latestMetrics(events) {
  return events.find((e) => e.type === "metrics" && e.data && e.data.total_steps);
}
export async function jobsView(token) {
  const tbody = h("tbody");
  async function refresh() {
    const jobs = await listAll("/fine_tuning/jobs");
    const progress = {};
    await Promise.all(jobs.filter((j) => j.status === "running").map(async (j) => {
      const ev = (await api(`/fine_tuning/jobs/${seg(j.id)}/events?limit=20`)).data;
      const m = latestMetrics(ev);
      if (m) progress[j.id] = m.data;
    }));
    if (!isCurrent(token)) return;
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
  if (!isCurrent(token)) return;
  clear(view(), h("div", { class: "titlebar" }, h("h1", { text: "Fine-tuning jobs" }),
    h("a", { class: "button primary", href: "#/new", text: "New job" })),
  h("table", { class: "grid", id: "jobs" }, h("thead", {}, h("tr", {},
    ["Job", "Status", "Base model", "Progress", "ETA", "Created", "Fine-tuned model"].map((t) => h("th", { scope: "col", text: t })))),
  tbody));
  every(3000, () => refresh().catch(() => {}));
}
