// Small pieces several views share.

import { h } from "./dom.js";

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);  // states.JobStatus.terminal()

export function badge(status) { return h("span", { class: `badge st-${status}`, text: status.replace("_", " ") }); }

export const scenarioSelect = (names) => h("select", {},
  h("option", { value: "", text: "none (chat or prompt/completion JSONL)" }),
  names.map((n) => h("option", { value: n, text: `${n} records` })));
