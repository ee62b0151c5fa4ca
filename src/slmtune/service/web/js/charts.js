// Training curves (uPlot, vendored and loaded before the modules as a global).

import { h } from "./dom.js";

export function makeChart(title, series, id) {
  const box = h("figure", { class: "chart", id, "data-points": "0" }, h("figcaption", { text: title }));
  const width = () => Math.max(280, Math.min(620, box.clientWidth || 560));
  const colors = ["#2563eb", "#dc2626", "#059669"];
  let plot = null;
  return {
    el: box,
    set(data) {
      const points = data[0].length;
      box.dataset.points = String(points);
      if (!points) return;
      if (!plot) {
        plot = new uPlot({ width: width(), height: 220, scales: { x: { time: false } },
          axes: [{ label: "step" }, {}],
          series: [{ label: "step" }, ...series.map((s, i) => ({ label: s, stroke: colors[i], width: 2, spanGaps: true,
            points: { show: points < 60 } }))] }, data, box);
      } else {
        plot.setData(data);
      }
    },
    resize() { if (plot) plot.setSize({ width: width(), height: 220 }); },
  };
}

// One curve per run over a shared step axis (a sweep's trials); the best one drawn thicker. Rebuilt when the runs
// or the best change, else only its data.
const PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];
export function makeOverlay(title, id) {
  const caption = h("figcaption", { text: title });
  const box = h("figure", { class: "chart", id, "data-points": "0", "data-series": "0" }, caption);
  const width = () => Math.max(280, Math.min(900, box.clientWidth || 760));
  let plot = null, shape = "";
  return {
    el: box,
    set(label, names, data, best) {
      caption.textContent = `${title}: ${label}`;
      box.dataset.points = String(data[0].length);
      box.dataset.series = String(names.length);
      const now = JSON.stringify([label, names, best]);
      if (plot && now === shape) { plot.setData(data); return; }
      if (plot) plot.destroy();
      plot = null; shape = now;
      if (!data[0].length) return;
      plot = new uPlot({ width: width(), height: 260, scales: { x: { time: false } }, axes: [{ label: "step" }, {}],
        series: [{ label: "step" }, ...names.map((n, i) => ({ label: i === best ? `${n} (best)` : n,
          stroke: PALETTE[i % PALETTE.length], width: i === best ? 3.5 : 1.5, spanGaps: true,
          points: { show: data[0].length < 60 } }))] }, data, box);
    },
  };
}
