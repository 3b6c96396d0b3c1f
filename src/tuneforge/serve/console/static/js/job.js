// One job: status and progress, live loss and token-accuracy curves (polled from the job's metric events while
// it runs), the events log, checkpoints, and cancel / pause / resume. All of it is read from the server.
import { get, post } from "./api.js";
import { lineChart } from "./charts.js";
import { reportView } from "./compare.js";
import { onLeave } from "./app.js";
import { alertBox, badge, copyButton, errorBox, h, mount, table, when } from "./ui.js";

const LIVE = ["validating_files", "queued", "running"];
const POLL_MS = 1500;

export async function page(main, _params, jobId) {
  document.title = `${jobId} — tuneforge`;
  const head = h("div");
  const controls = h("p", { class: "row" });
  const lossEl = h("div", { class: "chart", id: "loss-chart" });
  const accEl = h("div", { class: "chart", id: "accuracy-chart" });
  const eventsEl = h("div", { class: "events", id: "events", tabindex: "0", "aria-label": "Events log" });
  const ckptEl = h("div", { id: "checkpoints" });
  const status = h("div", { "aria-live": "polite" });
  const reportEl = h("section", { id: "report", "aria-label": "Before and after" });
  mount(main, head, controls, status,
    h("div", { class: "grid2" }, h("div", { class: "card" }, lossEl), h("div", { class: "card" }, accEl)),
    reportEl, h("h2", {}, "Events"), eventsEl, h("h2", {}, "Checkpoints"), ckptEl);
  let reported = false;

  const events = new Map(); // id -> event, merged across polls
  let charts = [];
  let drawn = "";
  let timer = null;
  let stopped = false;
  onLeave(() => { stopped = true; clearTimeout(timer); charts.forEach((c) => c.stop()); });

  const act = (what) => async () => {
    try { await post(`/v1/fine_tuning/jobs/${jobId}/${what}`); mount(status); }
    catch (e) { mount(status, errorBox(e)); }
    refresh();
  };

  async function refresh() {
    clearTimeout(timer);
    if (stopped) return;
    const [job, ev, ck] = await Promise.all([
      get(`/v1/fine_tuning/jobs/${jobId}`),
      get(`/v1/fine_tuning/jobs/${jobId}/events?limit=1000`),
      get(`/v1/fine_tuning/jobs/${jobId}/checkpoints?limit=100`),
    ]);
    if (stopped) return;
    for (const e of ev.data) events.set(e.id, e);
    renderHead(job);
    renderControls(job);
    const all = [...events.values()].sort((a, b) => a.created_at - b.created_at || (a.id < b.id ? -1 : 1));
    const metrics = all.filter((e) => e.type === "metrics" && e.data);
    const key = metrics.map((e) => e.id).join();
    if (key !== drawn) { drawn = key; drawCharts(metrics); }
    mount(eventsEl, all.slice().reverse().map((e) => h("div", { class: e.level === "error" ? "alert error" : e.level === "warn" ? "alert warn" : "" },
      h("span", { class: "muted mono" }, new Date(e.created_at * 1000).toLocaleTimeString(), " "), e.message)));
    mount(ckptEl, ck.data.length ? table(["Step", "Train loss", "Valid loss", "Checkpoint"], ck.data.map((c) => [
      String(c.step_number), fmt(c.metrics.train_loss), fmt(c.metrics.valid_loss), h("code", {}, c.fine_tuned_model_checkpoint)]))
      : h("p", { class: "muted" }, "None yet."));
    if (job.status === "succeeded" && !reported) await showReport(job);
    if (LIVE.includes(job.status) || job.status === "paused") timer = setTimeout(() => refresh().catch((e) => mount(status, errorBox(e))), LIVE.includes(job.status) ? POLL_MS : POLL_MS * 4);
  }

  function renderHead(job) {
    const pct = job.total_steps ? Math.min(1, job.step / job.total_steps) : null;
    const hp = job.method[job.method.type] ? job.method[job.method.type].hyperparameters : job.hyperparameters;
    mount(head,
      h("div", { class: "row" }, h("h1", {}, job.user_provided_suffix ? `Job ${job.user_provided_suffix}` : "Job"), badge(job.status)),
      h("dl", { class: "kv", id: "job-summary" },
        h("dt", {}, "id"), h("dd", {}, h("code", {}, job.id)),
        h("dt", {}, "base model"), h("dd", {}, job.model),
        h("dt", {}, "method"), h("dd", {}, `${job.method.type} · ${job.training_type}`),
        h("dt", {}, "hyperparameters"), h("dd", {}, Object.entries(hp || {}).map(([k, v]) => `${k} ${v}`).join(", ")),
        h("dt", {}, "progress"), h("dd", {}, pct === null ? `step ${job.step}` : [h("progress", { max: 1, value: pct, "aria-label": "Training progress" }), ` step ${job.step} of ${job.total_steps}`]),
        job.estimated_finish && LIVE.includes(job.status) ? [h("dt", {}, "estimated finish"), h("dd", {}, when(job.estimated_finish))] : null,
        h("dt", {}, "created"), h("dd", {}, when(job.created_at)),
        job.finished_at ? [h("dt", {}, "finished"), h("dd", {}, when(job.finished_at))] : null,
        job.fine_tuned_model ? [h("dt", {}, "fine-tuned model"), h("dd", { id: "tuned-model" }, h("code", {}, job.fine_tuned_model), " ", copyButton(job.fine_tuned_model, "model id"))] : null),
      job.error && job.error.message ? alertBox("error", h("strong", {}, `${job.error.code || "failed"}: `), job.error.message) : null,
      job.fine_tuned_model ? h("p", { class: "row" },
        h("a", { class: "button", href: `#/playground?a=${encodeURIComponent(job.model)}&b=${encodeURIComponent(job.fine_tuned_model)}` }, "Compare in the playground"),
        h("a", { class: "button secondary", href: "#/models" }, "Models and API snippet")) : null);
  }

  async function showReport(job) {
    reported = true;
    if (!(job.hyperparameter_extensions || {}).test_split) {
      mount(reportEl, h("h2", {}, "Before and after"), h("p", { class: "muted" },
        "This job held out no test split. Give the next one a test share (e.g. 0.1) for a report of the base and the tuned model on the same held-out questions; meanwhile, compare them in the playground."));
      return;
    }
    try {
      mount(reportEl, h("h2", {}, "Before and after"), reportView(await get(`/v1/fine_tuning/jobs/${jobId}/report`)));
    } catch (e) {
      mount(reportEl, h("h2", {}, "Before and after"), errorBox(e));
    }
  }

  function renderControls(job) {
    const b = (label, what, cls = "secondary") => h("button", { type: "button", class: cls, onclick: act(what) }, label);
    mount(controls,
      ["queued", "running", "validating_files"].includes(job.status) ? b("Pause", "pause") : null,
      job.status === "paused" ? b("Resume", "resume") : null,
      [...LIVE, "paused"].includes(job.status) ? b("Cancel", "cancel", "danger") : null);
  }

  function drawCharts(metrics) {
    charts.forEach((c) => c.stop());
    charts = [];
    const series = (name) => metrics.filter((e) => e.data[name] !== undefined && e.data[name] !== null).map((e) => [e.data.step, e.data[name]]);
    const dedupe = (pts) => [...new Map(pts).entries()];
    charts.push(lineChart(lossEl, "Loss", [
      { label: "train loss", points: dedupe(series("train_loss")) },
      { label: "validation loss", points: dedupe(series("valid_loss")) }]));
    charts.push(lineChart(accEl, "Token accuracy", [
      { label: "train", points: dedupe(series("train_mean_token_accuracy")) },
      { label: "validation", points: dedupe(series("valid_mean_token_accuracy")) }]));
  }

  await refresh();
}

function fmt(v) {
  return v === null || v === undefined ? "—" : v.toFixed(4);
}
