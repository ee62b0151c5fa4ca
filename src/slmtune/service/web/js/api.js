// The API client: every call goes to the public /v1 API with the key the user gave (sessionStorage, sent only
// in the Authorization header). A 401 asks for a key again (the "slmtune:signin" event, answered by signin.js).

import { h } from "./dom.js";

export const KEY_STORE = "slmtune.apiKey";

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status; this.param = body?.error?.param; this.code = body?.error?.code;
  }
}
export function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}
export async function api(path, { method = "GET", json, form, raw = false, signal } = {}) {
  const headers = authHeaders();
  let body = form;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  const r = await fetch(`/v1${path}`, { method, headers, body, signal });
  if (!r.ok) {
    let payload = null;
    try { payload = await r.json(); } catch { /* not JSON */ }
    const err = new ApiError(r.status, payload);
    if (r.status === 401 && path !== "/models") window.dispatchEvent(new CustomEvent("slmtune:signin", { detail: err.message }));
    throw err;
  }
  return raw ? r : r.json();
}
export async function listAll(path) {  // follow has_more/after through every page
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
export async function download(path, filename, transform) {
  const r = await api(path, { raw: true });
  let blob = await r.blob();
  if (transform) blob = await transform(blob);
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: filename });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
export async function baseModels() {
  const models = (await api("/models")).data;
  return models.filter((m) => m.owned_by === "slmtune").map((m) => m.id);
}
export async function scenarioNames() {  // the server's list (config.ScenarioName), not a copy of it
  const r = await fetch("/console/scenarios.json");
  return r.ok ? r.json() : [];
}

// Ids from the page's address or from an answer go into API paths encoded: "#/jobs/..%2Ffiles" must name a job
// called "../files" (which does not exist), never reach another route.
export const seg = (id) => encodeURIComponent(String(id));
