// The scenario report's Markdown, and result files stored base64 (OpenAI's convention for result CSVs).

import { h } from "./dom.js";

export async function decodeBase64Blob(blob) {
  const text = (await blob.text()).trim();
  try {
    const bin = atob(text);
    return new Blob([Uint8Array.from(bin, (c) => c.charCodeAt(0))], { type: "text/csv" });
  } catch { return blob; }
}

// A small Markdown subset for the scenario report (headings, paragraphs, lists, tables, images): built as DOM
// nodes with textContent, so nothing in the report is ever parsed as HTML.
export function renderMarkdown(text, images) {
  const out = h("div", { class: "markdown" });
  const lines = text.split("\n");
  let i = 0;
  const inline = (s) => {
    const parts = [];
    const re = /!\[([^\]]*)\]\(([^)]+)\)|\*\*([^*]+)\*\*|`([^`]+)`/g;
    let last = 0, m;
    while ((m = re.exec(s))) {
      if (m.index > last) parts.push(s.slice(last, m.index));
      if (m[2] !== undefined) {
        const src = images[m[2].split("/").pop()];
        parts.push(src ? h("img", { src, alt: m[1] }) : `[${m[1]}]`);
      } else if (m[3] !== undefined) parts.push(h("strong", { text: m[3] }));
      else parts.push(h("code", { text: m[4] }));
      last = re.lastIndex;
    }
    parts.push(s.slice(last));
    return parts;
  };
  while (i < lines.length) {
    const line = lines[i];
    const hm = line.match(/^(#{1,4})\s+(.*)$/);
    if (hm) { out.append(h(`h${Math.min(6, hm[1].length + 2)}`, {}, inline(hm[2]))); i++; continue; }
    if (line.startsWith("|")) {
      const rows = [];
      while (i < lines.length && lines[i].startsWith("|")) { rows.push(lines[i]); i++; }
      const cells = (r) => r.replace(/^\||\|$/g, "").split("|").map((c) => c.trim());
      const body = rows.filter((r) => !/^\|\s*:?-{2,}/.test(r));
      out.append(h("table", { class: "grid" }, h("thead", {}, h("tr", {}, cells(body[0]).map((c) => h("th", {}, inline(c))))),
        h("tbody", {}, body.slice(1).map((r) => h("tr", {}, cells(r).map((c) => h("td", {}, inline(c))))))));
      continue;
    }
    if (/^\s*[-*]\s+/.test(line)) {
      const ul = h("ul");
      while (i < lines.length && /^\s*[-*]\s+/.test(lines[i])) { ul.append(h("li", {}, inline(lines[i].replace(/^\s*[-*]\s+/, "")))); i++; }
      out.append(ul);
      continue;
    }
    if (line.trim()) out.append(h("p", {}, inline(line)));
    i++;
  }
  return out;
}
