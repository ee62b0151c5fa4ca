// Datasets: upload (drop or pick), the file check with its preview, the list of files.

import { api, baseModels, listAll, scenarioNames, seg } from "../api.js";
import { alertBox, clear, field, fmtBytes, fmtTime, h, isCurrent, nextId, view } from "../dom.js";
import { scenarioSelect } from "../widgets.js";

export async function datasetsView(token) {
  const [models, scenarios] = await Promise.all([baseModels(), scenarioNames()]);
  const modelSel = h("select", {}, models.map((m) => h("option", { value: m, text: m })));
  const scenarioSel = scenarioSelect(scenarios);
  // the drop zone takes drags; the native file input inside it is the keyboard's way in (Tab, then Enter or Space)
  const picker = h("input", { type: "file", accept: ".jsonl", id: nextId("f") });
  const status = h("div", { "aria-live": "polite", id: "upload-status" });
  const checkPanel = h("section", { id: "check", "aria-label": "File check" });
  const tbody = h("tbody");
  const drop = h("div", { class: "drop", id: "drop",
    ondragover: (e) => { e.preventDefault(); drop.classList.add("over"); },
    ondragleave: () => drop.classList.remove("over"),
    ondrop: (e) => { e.preventDefault(); drop.classList.remove("over"); upload(e.dataTransfer.files); } },
    h("p", {}, h("strong", { text: "Drop a .jsonl file here" }), " or choose one:"),
    h("label", { for: picker.id, class: "visually-hidden", text: "Upload a JSONL file" }), picker);
  picker.addEventListener("change", () => { upload(picker.files); picker.value = ""; });

  async function upload(files) {
    for (const file of files) {
      clear(status, alertBox(`Uploading ${file.name}…`, "info"));
      const form = new FormData();
      form.append("purpose", "fine-tune");
      form.append("file", file, file.name);
      try {
        const f = await api("/files", { method: "POST", form });
        clear(status, alertBox(`Uploaded ${f.filename} as ${f.id}.`, "ok"));
        await refresh();
        await check(f);
      } catch (err) {
        if (err.status !== 401) clear(status, alertBox(`${file.name} was refused: ${err.message}`));
      }
    }
  }
  async function check(f) {
    clear(checkPanel, h("p", { class: "muted", text: `Checking ${f.filename} for ${modelSel.value}…` }));
    const model = encodeURIComponent(modelSel.value);
    const sc = scenarioSel.value ? `&scenario=${scenarioSel.value}` : "";
    const c = await api(`/slmtune/files/${seg(f.id)}/check?model=${model}&preview=3${sc}`);
    if (!isCurrent(token)) return;
    clear(checkPanel, renderCheck(c));
  }
  async function refresh() {
    const files = await listAll("/files?purpose=fine-tune");
    if (!isCurrent(token)) return;
    clear(tbody, files.length ? files.map((f) => h("tr", {},
      h("td", {}, h("span", { text: f.filename })), h("td", { class: "mono", text: f.id }),
      h("td", { text: fmtBytes(f.bytes) }), h("td", { text: fmtTime(f.created_at) }),
      h("td", { class: "actions" },
        h("button", { type: "button", text: "Check", "aria-label": `Check ${f.filename}`,
          onclick: () => check(f).catch((e) => clear(checkPanel, alertBox(e.message))) }),
        h("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete ${f.filename}`,
          onclick: async () => {
            if (!confirm(`Delete ${f.filename} (${f.id})?`)) return;
            try { await api(`/files/${seg(f.id)}`, { method: "DELETE" }); await refresh(); }
            catch (e) { clear(status, alertBox(e.message)); }
          } })))) : h("tr", {}, h("td", { colspan: "5", class: "muted", text: "No files yet." })));
  }
  await refresh();
  if (!isCurrent(token)) return;
  clear(view(),
    h("h1", { text: "Datasets" }),
    h("div", { class: "card" }, drop,
    h("div", { class: "row" }, field("Check for base model", modelSel,
      "Token counts and the preview use this model's tokenizer and chat template."),
    field("File format", scenarioSel, "a scenario's records become chat examples through its prompt template")),
    status),
    checkPanel,
    h("h2", { text: "Files" }),
    h("table", { class: "grid", id: "files" }, h("thead", {}, h("tr", {},
      ["File", "ID", "Size", "Uploaded", ""].map((t) => h("th", { scope: "col", text: t })))), tbody));
}

function renderCheck(c) {
  const out = [h("h2", { text: `Check: ${c.filename}` })];
  out.push(c.ok ? alertBox(`No problems for ${c.model}.`, "ok")
    : alertBox(`${c.n_problems} problem${c.n_problems === 1 ? "" : "s"} for ${c.model}.`));
  for (const w of c.warnings || []) out.push(alertBox(w, "warn"));
  if (c.problems.length) {
    out.push(h("ul", { class: "problems" }, c.problems.map((p) => h("li", {},
      h("span", { class: "loc", text: `line ${p.line}` }), " · ", h("code", { text: p.field }), ": ",
      h("span", { text: p.message })))));
  }
  const stats = Object.entries({ ...Object.fromEntries(Object.entries(c.formats).map(([k, v]) => [`${k} examples`, v])),
    ...c.stats });
  out.push(h("dl", { class: "stats" }, stats.map(([k, v]) => [h("dt", { text: k.replaceAll("_", " ") }),
    h("dd", { text: typeof v === "number" ? v.toLocaleString() : JSON.stringify(v) })])));
  if (c.preview.length) {
    out.push(h("h3", { text: "Preview" }), h("p", { class: "legend" },
      h("mark", { class: "trained", text: "highlighted" }), " text carries loss: the model learns to write it; the rest is context."));
    for (const ex of c.preview) {
      out.push(h("figure", { class: "example" },
        h("figcaption", { text: `line ${ex.line} · ${ex.tokens} tokens, ${ex.trained_tokens} trained` }),
        h("pre", { class: "rendered" }, ex.segments.map((s) => s.trained
          ? h("mark", { class: "trained", text: s.text, title: `${s.tokens} trained tokens` })
          : h("span", { text: s.text })))));
    }
  }
  return out;
}
