// Charts through uPlot (vendored from npm): line charts of a job's metrics and a histogram of record lengths.
// Each chart follows its container's width, so it works on a phone-width window too.
const COLORS = ["#0b5cad", "#c2410c", "#116329", "#8250df"];

function sized(el, make) {
  const chart = make(Math.max(280, el.clientWidth || 600));
  const ro = new ResizeObserver(() => chart.setSize({ width: Math.max(280, el.clientWidth), height: chart.height }));
  ro.observe(el);
  return { chart, stop: () => { ro.disconnect(); chart.destroy(); } };
}

// series: [{label, points: [[x, y], ...]}] drawn against one x axis (the step).
export function lineChart(el, title, series, xLabel = "step") {
  const xs = [...new Set(series.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
  const columns = series.map((s) => {
    const at = new Map(s.points);
    return xs.map((x) => (at.has(x) ? at.get(x) : null));
  });
  el.setAttribute("role", "img");
  el.setAttribute("aria-label", `${title}: ` + series.map((s) => `${s.label} ${s.points.length} points` +
    (s.points.length ? `, last ${s.points[s.points.length - 1][1].toFixed(4)}` : "")).join("; "));
  return sized(el, (width) => new window.uPlot({
    title, width, height: 240,
    scales: { x: { time: false } },
    axes: [{ label: xLabel }, {}],
    series: [{ label: xLabel }, ...series.map((s, i) => ({
      label: s.label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true,
      points: { show: s.points.length < 40 },
    }))],
  }, [xs, ...columns], el));
}

export function histogram(el, title, edges, counts, unit) {
  const mids = counts.map((_, i) => (edges[i] + edges[i + 1]) / 2);
  el.setAttribute("role", "img");
  el.setAttribute("aria-label", `${title}: ` + counts.map((c, i) => `${edges[i]}–${edges[i + 1]} ${unit}: ${c}`).join(", "));
  const bars = window.uPlot.paths.bars({ size: [0.9, 80] });
  return sized(el, (width) => new window.uPlot({
    title, width, height: 200,
    scales: { x: { time: false }, y: { range: (_u, _min, max) => [0, Math.max(1, max)] } },
    axes: [{ label: unit }, { label: "records" }],
    series: [{ label: unit }, { label: "records", fill: "#6ea8e0", stroke: "#0b5cad", paths: bars, points: { show: false } }],
  }, [mids, counts], el));
}
