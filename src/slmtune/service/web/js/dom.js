// DOM building (h() never parses HTML: every text goes in through textContent), formatting, and the current
// view's lifecycle: its polling timers and the token that drops late answers for a view already left.

let timers = [];          // polling timers of the current view, cleared when the view changes
let viewToken = 0;        // bumps on every navigation: late answers for a left view are dropped

export function h(tag, attrs, ...children) {
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
export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
export function clear(el, ...children) { el.replaceChildren(); return append(el, children); }
export const view = () => document.getElementById("view");
let uid = 0;
export const nextId = (p) => `${p}-${++uid}`;
export function field(label, control, hint) {
  if (!control.id) control.id = nextId("f");
  return h("div", { class: "field" }, h("label", { for: control.id, text: label }), control,
    hint ? h("span", { class: "hint", text: hint }) : null);
}
export function alertBox(msg, kind = "error") {
  return h("div", { class: `alert ${kind}`, role: kind === "error" ? "alert" : "status", text: msg });
}
export function fmtTime(t) { return t ? new Date(t * 1000).toLocaleString() : "—"; }
export function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / (1 << 20)).toFixed(1)} MB`;
}
export function fmtDuration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "—";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}
export function every(ms, fn) { const t = setInterval(fn, ms); timers.push(t); return t; }
export function stopPolling() { timers.forEach(clearInterval); timers = []; }
export function stopTimers() { stopPolling(); viewToken++; }  // leaving the view: its late answers are dropped too
export const currentToken = () => viewToken;
export const isCurrent = (token) => token === viewToken;
