// Playground: streamed chat with one model, or two side by side on the same prompt; optional tools (JSON), whose
// calls are shown with their arguments and answered with a result typed here.

import { api } from "../api.js";
import { alertBox, clear, field, h, isCurrent, view } from "../dom.js";

export async function playgroundView(token, query) {
  const params = new URLSearchParams(query || "");
  const models = (await api("/models")).data.map((m) => m.id);
  if (!isCurrent(token)) return;
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
  const tools = h("textarea", { rows: 3, id: "tools", class: "mono",
    placeholder: 'optional tools, as JSON: [{"type": "function", "function": {"name": "get_weather", "parameters": {...}}}]' });
  const toolChoice = h("select", { id: "tool-choice" }, ["auto", "required", "none"].map((v) => h("option", { value: v, text: v })));
  const formStatus = h("div", { "aria-live": "polite" });
  function toolList() {  // null when empty; throws with the reason when it is not a JSON list
    const text = tools.value.trim();
    if (!text) return null;
    let parsed;
    try { parsed = JSON.parse(text); } catch (e) { throw new Error(`Tools: not valid JSON (${e.message})`); }
    if (!Array.isArray(parsed)) throw new Error("Tools: expected a JSON list of {type: function, function: {...}}");
    return parsed;
  }
  const panes = [makePane("A", selA), makePane("B", selB)];
  const sendBtn = h("button", { type: "submit", class: "primary", text: "Send" });
  let controllers = [];

  function makePane(name, sel) {
    const log = h("div", { class: "chatlog", id: `pane-${name}`, "aria-live": "polite", "aria-label": `Replies of model ${name}` });
    return { name, sel, log, history: [], el: h("section", { class: "card pane" }, field(`Model ${name}`, sel), log) };
  }
  function showCalls(pane, out, calls, defs) {  // each call with its arguments, and a box for its result
    const pending = new Set(calls.map((c) => c.id));
    for (const call of calls) {
      const result = h("input", { type: "text", placeholder: `result of ${call.function.name}`, "aria-label": `Result of ${call.function.name}` });
      const box = h("form", { class: "toolcall", "data-call": call.function.name,
        onsubmit: async (e) => {
          e.preventDefault();
          pane.history.push({ role: "tool", tool_call_id: call.id, content: result.value });
          box.replaceChildren(h("span", { class: "muted", text: `${call.function.name} → ${result.value}` }));
          pending.delete(call.id);
          if (!pending.size) await stream(pane, null, defs);  // every call answered: the model goes on
        } },
        h("code", { class: "mono", text: `${call.function.name}(${call.function.arguments})` }), result,
        h("button", { type: "submit", text: "Return result" }));
      out.append(box);
    }
  }
  async function stream(pane, text, defs) {
    const model = pane.sel.value;
    if (!model) return;
    const out = h("div", { class: "msg assistant", "data-state": "streaming" });
    if (text !== null) {
      pane.history.push({ role: "user", content: text });
      pane.log.append(h("div", { class: "msg user", text }));
    }
    pane.log.append(out);
    const said = h("span");
    out.append(said);
    const messages = [...(system.value.trim() ? [{ role: "system", content: system.value }] : []), ...pane.history];
    const ctl = new AbortController();
    controllers.push(ctl);
    let reply = "";
    const calls = [];
    try {
      const r = await api("/chat/completions", { method: "POST", raw: true, signal: ctl.signal, json: {
        model, messages, stream: true, max_completion_tokens: parseInt(maxTokens.value, 10) || 64,
        temperature: parseFloat(temperature.value) || 0,
        ...(defs ? { tools: defs, tool_choice: toolChoice.value } : {}) } });
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
          if (delta) { reply += delta; said.textContent = reply; pane.log.scrollTop = pane.log.scrollHeight; }
          for (const c of chunk.choices?.[0]?.delta?.tool_calls || []) calls.push(c);  // each arrives whole
        }
      }
      out.dataset.state = "done";
      pane.history.push({ role: "assistant", content: reply || null, ...(calls.length ? { tool_calls: calls } : {}) });
      if (calls.length) showCalls(pane, out, calls, defs);
    } catch (err) {
      out.dataset.state = "error";
      if (err.name !== "AbortError") out.replaceChildren(alertBox(err.message));
      if (text !== null) pane.history.pop();
    }
  }
  const form = h("form", { class: "card", id: "playground-form", "aria-label": "Prompt",
    onsubmit: async (e) => {
      e.preventDefault();
      const text = prompt.value.trim();
      if (!text) return;
      let defs;
      try { defs = toolList(); } catch (err) { clear(formStatus, alertBox(err.message)); return; }
      clear(formStatus);
      prompt.value = "";
      sendBtn.disabled = true;
      try { await Promise.all(panes.map((p) => stream(p, text, defs))); } finally { sendBtn.disabled = false; controllers = []; }
    } },
    field("System", system), field("Message", prompt),
    h("div", { class: "row" }, field("Max tokens", maxTokens), field("Temperature", temperature),
      field("Tool choice", toolChoice)),
    h("details", { class: "tools" }, h("summary", { text: "Tools (function calling)" }), field("Tools (JSON)", tools)),
    formStatus,
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
