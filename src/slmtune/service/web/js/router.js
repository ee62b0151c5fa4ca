// The router: #/path → a view; the view renders into #view and marks it data-ready (tests wait on it).

import { KEY_STORE } from "./api.js";
import { alertBox, clear, currentToken, h, isCurrent, stopTimers, view } from "./dom.js";
import { ensureSignedIn, signIn } from "./signin.js";
import { datasetsView } from "./views/datasets.js";
import { jobView } from "./views/job.js";
import { jobsView } from "./views/jobs.js";
import { modelsView } from "./views/models.js";
import { newJobView } from "./views/new_job.js";
import { playgroundView } from "./views/playground.js";
import { sweepView, sweepsView } from "./views/sweeps.js";

const ROUTES = [  // hash, view, its nav link, the name #view[data-ready] takes once it has rendered
  [/^#\/datasets$/, datasetsView, "datasets", "datasets"],
  [/^#\/new$/, newJobView, "new", "new"],
  [/^#\/jobs$/, jobsView, "jobs", "jobs"],
  [/^#\/jobs\/([^/?]+)$/, jobView, "jobs", "job"],
  [/^#\/sweeps$/, sweepsView, "sweeps", "sweeps"],
  [/^#\/sweeps\/([^/?]+)$/, sweepView, "sweeps", "sweep"],
  [/^#\/playground(?:\?(.*))?$/, playgroundView, "playground", "playground"],
  [/^#\/models$/, modelsView, "models", "models"],
];
export async function route() {
  stopTimers();
  delete view().dataset.ready;
  const token = currentToken();
  if (!location.hash || location.hash === "#/") { location.replace("#/datasets"); return; }
  if (!(await ensureSignedIn()) || !isCurrent(token)) return;
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
      if (isCurrent(token)) view().dataset.ready = ready;  // rendered (tests wait on this)
    } catch (err) {
      if (err.status !== 401 && isCurrent(token)) clear(view(), alertBox(err.message));
    }
    return;
  }
  clear(view(), alertBox(`No page at ${location.hash}`));
}

export function start() {
  window.addEventListener("hashchange", route);
  window.addEventListener("slmtune:route", route);  // signed in
  document.getElementById("sign-out").addEventListener("click", () => { signIn(null); });
  route();
}
