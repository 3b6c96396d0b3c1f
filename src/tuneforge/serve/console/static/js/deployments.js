// Deployments: each alias's traffic split and per-arm figures (requests, thumbs-up rate with its 95% interval,
// mean score, latency) and the test between arms, as GET /v1/deployments/{name}/stats reports them.
import { get } from "./api.js";
import { h, mount, table } from "./ui.js";

const pct = (v) => (v === null || v === undefined ? "—" : `${(100 * v).toFixed(1)}%`);

export async function list(main) {
  document.title = "Deployments — tuneforge";
  const box = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  mount(main, h("h1", {}, "Deployments"), box);
  const { data } = await get("/v1/deployments");
  if (!data.length) {
    mount(box, h("p", { class: "muted" }, "No deployments. Create one with POST /v1/deployments (see the API docs) to split traffic between model versions."));
    return;
  }
  const stats = await Promise.all(data.map((d) => get(`/v1/deployments/${encodeURIComponent(d.name)}/stats`)));
  mount(box, data.map((d, i) => h("section", { class: "card", style: "margin:10px 0" },
    h("h2", {}, d.name, d.store ? h("span", { class: "badge" }, "stores answers") : null),
    table(["Model", "Weight", "Requests", "Thumbs up", "Up rate (95% CI)", "Mean score", "p50 / p95 latency"], stats[i].arms.map((a) => [
      h("code", {}, a.model), a.shadow ? "shadow" : String(a.weight), String(a.requests), `${a.thumbs_up} / ${a.ratings}`,
      a.up_rate === null ? "—" : `${pct(a.up_rate)} (${pct(a.up_rate_ci95[0])}–${pct(a.up_rate_ci95[1])})`,
      a.mean_score === null ? "—" : a.mean_score.toFixed(2),
      a.latency_ms_p50 === null ? "—" : `${Math.round(a.latency_ms_p50)} / ${Math.round(a.latency_ms_p95)} ms`])),
    stats[i].comparisons.map((c) => h("p", {}, `${c.model} vs ${c.control}: ${c.verdict}`, c.difference === null ? "" : ` (difference ${pct(c.difference)}, p = ${c.p_value.toFixed(4)})`)),
    h("p", { class: "muted" }, stats[i].test))));
}
