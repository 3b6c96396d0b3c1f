// The before/after report of a job that held out a test split: the base and the tuned model on the same
// questions — headline metrics and their gain, validation loss, forgetting, per-field figures with the tuned
// model's confusion matrices, and sample answers side by side (GET /v1/fine_tuning/jobs/{id}/report).
import { h, table } from "./ui.js";

const num = (v, d = 1) => (v === null || v === undefined ? "—" : Number(v).toFixed(d));
const signed = (v) => (v === null || v === undefined ? "—" : `${v >= 0 ? "+" : ""}${Number(v).toFixed(1)}`);

export function reportView(r) {
  const variants = r.variants || [];
  const tuned = variants.find((v) => v.key === "tuned") || variants[variants.length - 1];
  const names = Object.keys((tuned && tuned.headline) || {});
  const out = [
    h("p", { class: "muted" }, `${r.n_test} held-out test records (${r.task} task), never trained on. Figures in %.`),
    table(["Metric", ...variants.map((v) => v.title), "Gain"], names.map((n) => [
      n, ...variants.map((v) => num(v.headline[n])), h("strong", {}, signed(r.gain && r.gain[n]))]), "Before and after"),
  ];
  const facts = [];
  if (r.validation && r.validation.base && r.validation.tuned) {
    facts.push(h("dt", {}, "validation loss"), h("dd", {}, `${num(r.validation.base.loss, 3)} (base) → ${num(r.validation.tuned.loss, 3)} (tuned)`));
  }
  if (r.forgetting && r.forgetting.perplexity_change_pct !== undefined) {
    facts.push(h("dt", {}, "forgetting"), h("dd", {}, `general-text perplexity ${num(r.forgetting.base_perplexity, 2)} → ${num(r.forgetting.tuned_perplexity, 2)} (${signed(r.forgetting.perplexity_change_pct)}%) on ${r.forgetting.n_general} general examples`));
  }
  if (facts.length) out.push(h("dl", { class: "kv" }, facts));
  const fields = tuned && tuned.metrics.fields;
  if (fields) {
    const base = (variants.find((v) => v.key === "base") || {}).metrics || {};
    out.push(h("h3", {}, "Per field"));
    out.push(table(["Field", "Base accuracy", "Tuned accuracy", "Base macro-F1", "Tuned macro-F1"], Object.entries(fields).map(([f, m]) => {
      const b = base.fields && base.fields[f] ? base.fields[f].strict : {};
      return [f, num(100 * (b.accuracy ?? NaN)), num(100 * m.strict.accuracy), num(100 * (b.macro_f1 ?? NaN)), num(100 * m.strict.macro_f1)];
    }), "Per field (strict)"));
    for (const [f, m] of Object.entries(fields)) {
      if (m.strict.confusion) out.push(confusion(`${f}: tuned model's answers (rows: reference, columns: answer)`, m.strict.confusion));
    }
  } else if (tuned && tuned.metrics.confusion) {
    out.push(confusion("Tuned model's answers (rows: reference, columns: answer)", tuned.metrics.confusion));
  }
  const samples = (r.samples || []).slice(0, 8);
  if (samples.length) {
    const keys = Object.keys(samples[0].answers);
    out.push(h("h3", {}, "Sample answers"));
    out.push(table(["Question", "Reference", ...keys], samples.map((s) => [
      h("div", { class: "answer-cell" }, h("span", { class: "muted" }, s.where || ""), h("div", {}, s.question)),
      h("code", {}, s.reference), ...keys.map((k) => h("code", {}, s.answers[k]))]), "Sample answers"));
  }
  return out;
}

function confusion(title, c) {
  return h("div", { class: "confusion" }, h("h3", {}, title),
    table(["", ...c.labels], c.matrix.map((row, i) => [h("strong", {}, c.labels[i]), ...row.map((n, j) => h("span", { class: i === j && n ? "hit" : n ? "miss" : "muted" }, String(n)))]), title));
}
