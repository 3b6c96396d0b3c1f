// Datasets: upload (drag and drop, with progress), the list, and one file's report — what `tuneforge data
// inspect` says, with line numbers — and its first records as the model will see them.
import { del, get, upload } from "./api.js";
import { histogram } from "./charts.js";
import { onLeave } from "./app.js";
import { alertBox, bytes, errorBox, field, h, mount, table, toast, turns, when } from "./ui.js";

const ACCEPT = ".jsonl,.json,.csv,.tsv,.parquet,.xml";

export async function list(main) {
  document.title = "Datasets — tuneforge";
  const status = h("div", { "aria-live": "polite" });
  const bar = h("progress", { max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const input = h("input", { type: "file", accept: ACCEPT, id: "upload-file" });
  const send = async (file) => {
    if (!file) return;
    bar.hidden = false;
    bar.value = 0;
    mount(status, alertBox("warn", `Uploading ${file.name} (${bytes(file.size)})…`));
    try {
      const f = await upload(file, "fine-tune", (p) => { bar.value = p; });
      bar.value = 1;
      toast(`Uploaded ${f.filename}`);
      location.hash = `#/datasets/${f.id}`;
    } catch (e) {
      bar.hidden = true;
      mount(status, errorBox(e));
    }
  };
  input.addEventListener("change", () => send(input.files[0]));
  const drop = h("div", { class: "drop", id: "drop" },
    h("p", {}, "Drop a training file here, or choose one:"),
    field("Training file", input, "JSONL, JSON, CSV, TSV, Parquet or XML: chat, prompt/completion, preference, text or label records"),
    bar, status);
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); send(e.dataTransfer.files[0]); });

  const files = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  mount(main, h("h1", {}, "Datasets"), drop, h("h2", {}, "Your files"), files);
  const { data } = await get("/v1/files?purpose=fine-tune");
  mount(files, data.length ? table(["File", "Size", "Uploaded", "Id", ""], data.map((f) => [
    h("a", { href: `#/datasets/${f.id}` }, f.filename), bytes(f.bytes), when(f.created_at), h("code", {}, f.id),
    h("a", { class: "button secondary", href: `#/jobs/new?file=${f.id}` }, "Fine-tune"),
  ])) : h("p", { class: "muted" }, "No files yet: upload one above."));
}

async function baseModel() {
  const { data } = await get("/v1/models");
  const bases = data.filter((m) => m.owned_by === "tuneforge");
  return bases.length ? bases[0].id : null;
}

export async function detail(main, _params, fileId) {
  document.title = "Dataset — tuneforge";
  mount(main, h("p", { class: "muted" }, "Reading the file…"));
  const [f, model] = await Promise.all([get(`/v1/files/${fileId}`), baseModel()]);
  const q = new URLSearchParams({ preview: "5" });
  if (model) q.set("model", model);
  let report;
  try {
    report = await get(`/v1/files/${fileId}/inspect?${q}`);
  } catch (e) {
    mount(main, h("h1", {}, f.filename), errorBox(e), actions(f));
    return;
  }
  document.title = `${f.filename} — tuneforge`;
  const p = report.problems;
  const verdict = p.errors || report.rejects.total
    ? alertBox("error", `${p.errors} errors and ${report.rejects.total} unusable records: a job on this file fails until they are fixed (see below).`)
    : p.warnings ? alertBox("warn", `${p.warnings} warnings; the file can be trained on.`)
      : alertBox("ok", "No problems found: the file can be trained on.");
  const chart = h("div", { class: "chart", id: "lengths" });
  mount(main,
    h("h1", {}, f.filename),
    verdict,
    h("dl", { class: "kv", id: "summary" },
      h("dt", {}, "format"), h("dd", {}, report.format),
      h("dt", {}, "rows read"), h("dd", {}, String(report.rows)),
      h("dt", {}, "examples"), h("dd", {}, String(report.examples)),
      h("dt", {}, "unusable rows"), h("dd", {}, String(report.rejects.total)),
      h("dt", {}, "kinds"), h("dd", {}, inline(report.kinds)),
      Object.keys(report.labels).length ? [h("dt", {}, "labels"), h("dd", {}, inline(report.labels))] : null,
      h("dt", {}, "duplicates"), h("dd", {}, `${report.duplicates.exact} exact, ${report.duplicates.near} near`),
      h("dt", {}, "size"), h("dd", {}, bytes(f.bytes)),
      h("dt", {}, "id"), h("dd", {}, h("code", {}, f.id))),
    actions(f),
    problemsSection(report),
    h("h2", {}, `Lengths (${report.lengths.unit}${model && report.lengths.unit === "tokens" ? ` of ${model}` : ""})`),
    report.note ? h("p", { class: "muted" }, report.note) : null,
    report.lengths.count ? h("p", { class: "muted" }, `min ${report.lengths.min}, median ${report.lengths.p50}, p95 ${report.lengths.p95}, max ${report.lengths.max}`) : null,
    chart,
    h("h2", {}, "First records, as the model sees them"),
    h("div", { id: "preview" }, (report.preview || []).map(previewCard)));
  if (report.lengths.count) {
    const c = histogram(chart, "records by length", report.lengths.histogram.edges, report.lengths.histogram.counts, report.lengths.unit);
    onLeave(c.stop);
  }
}

function inline(counts) {
  return Object.entries(counts).map(([k, v]) => `${k} ${v}`).join(", ") || "—";
}

function actions(f) {
  return h("p", { class: "row" },
    h("a", { class: "button", href: `#/jobs/new?file=${f.id}` }, "Fine-tune on this file"),
    h("button", {
      type: "button", class: "danger",
      onclick: async () => {
        if (!window.confirm(`Delete ${f.filename}? Jobs that used it keep their results.`)) return;
        await del(`/v1/files/${f.id}`);
        toast(`Deleted ${f.filename}`);
        location.hash = "#/datasets";
      },
    }, "Delete"));
}

function problemsSection(report) {
  const p = report.problems;
  const r = report.rejects;
  const out = [h("h2", {}, "Validation")];
  if (!Object.keys(p.by_code).length && !r.total) out.push(h("p", {}, "No problems."));
  if (Object.keys(p.by_code).length) {
    out.push(table(["Problem", "Severity", "Count", "First at"], Object.entries(p.by_code).map(([code, e]) => [
      h("code", {}, code), h("span", { class: `badge ${e.severity === "error" ? "failed" : "warning"}` }, e.severity),
      String(e.count), e.first || "dataset"])));
    out.push(h("ul", { id: "problems" }, p.items.map((i) => h("li", {}, h("strong", {}, `${i.where || "dataset"}${i.field ? `, ${i.field}` : ""}: `), i.message))));
  }
  if (r.total) {
    out.push(h("h2", {}, `Records that cannot be used: ${r.total}`));
    out.push(h("ul", { id: "rejects" }, r.items.map((i) => h("li", {}, h("strong", {}, `${i.where || "dataset"}: `), i.reason))));
  }
  if (report.duplicates.pairs.length) {
    out.push(h("h2", {}, "Duplicates"));
    out.push(table(["Record", "Duplicate of", "Similarity"], report.duplicates.pairs.map((d) => [d.where, d.of, d.exact ? "exact" : String(d.similarity)])));
  }
  return out;
}

function previewCard(row) {
  return h("div", { class: "card", style: "margin:8px 0" },
    h("p", { class: "muted" }, `${row.where || ""} · ${row.kind}${row.label ? ` · label ${row.label}` : ""}${row.desirable !== undefined ? ` · rated ${row.desirable ? "up" : "down"}` : ""}`),
    row.text && !row.messages.length ? h("div", { class: "turn" }, row.text) : null,
    turns(row.messages),
    row.chosen ? turns(row.chosen, "chosen") : null,
    row.rejected ? [h("p", { class: "muted" }, "rejected:"), turns(row.rejected, "rejected")] : null,
    row.rendered ? h("details", {}, h("summary", {}, "As trained (chat template applied)"), h("pre", {}, row.rendered)) : null);
}
