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
