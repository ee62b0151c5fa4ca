// Models: base, tuned and checkpoint models, how to call each, delete.

import { api } from "../api.js";
import { alertBox, clear, h, isCurrent, view } from "../dom.js";

function snippets(id) {
  const base = `${location.origin}/v1`;
  const curl = `curl ${base}/chat/completions \\\n  -H "Authorization: Bearer $SLMTUNE_API_KEY" \\\n` +
    `  -H "Content-Type: application/json" \\\n  -d '${JSON.stringify({ model: id, messages: [{ role: "user", content: "Hello!" }] })
      .replaceAll("'", "'\\''")}'`;
  const py = `from openai import OpenAI\n\nclient = OpenAI(base_url="${base}", api_key=os.environ["SLMTUNE_API_KEY"])\n` +
    `reply = client.chat.completions.create(\n    model=${JSON.stringify(id)},\n` +
    `    messages=[{"role": "user", "content": "Hello!"}],\n)\nprint(reply.choices[0].message.content)`;
  const tools = `tools = [{"type": "function", "function": {\n    "name": "get_weather", "description": "Current weather in a city",\n` +
    `    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]\n` +
    `reply = client.chat.completions.create(\n    model=${JSON.stringify(id)},\n` +
    `    messages=[{"role": "user", "content": "What is the weather in Oslo?"}],\n    tools=tools,  # "required" forces a valid call\n)\n` +
    `for call in reply.choices[0].message.tool_calls or []:\n    print(call.function.name, call.function.arguments)`;
  return { curl, py: `import os\n${py}`, tools };
}
export async function modelsView(token) {
  const tbody = h("tbody");
  const status = h("div", { "aria-live": "polite" });
  async function refresh() {
    const models = (await api("/models")).data;
    if (!isCurrent(token)) return;
    clear(tbody, models.map((m) => {
      const s = snippets(m.id);
      const own = m.owned_by !== "slmtune";
      const tuned = own && !m.id.includes(":ckpt-step-");
      return h("tr", { "data-model": m.id },
        h("td", {}, h("span", { class: "mono", text: m.id }),
          h("details", { class: "snippet" }, h("summary", { text: "Call it" }),
            h("p", { text: "curl" }), h("pre", {}, h("code", { text: s.curl })),
            h("p", { text: "Python (openai SDK)" }), h("pre", {}, h("code", { text: s.py })),
            h("p", { text: "With tools (function calling, docs/tools.md)" }), h("pre", {}, h("code", { class: "tools-snippet", text: s.tools })))),
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
  if (!isCurrent(token)) return;
  clear(view(), h("h1", { text: "Models" }), status,
    h("table", { class: "grid", id: "models" }, h("thead", {}, h("tr", {},
      ["Model", "Kind", "Owner", ""].map((t) => h("th", { scope: "col", text: t })))), tbody));
}
