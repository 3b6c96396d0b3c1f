// Jobs: the list, and the form that starts one (base model, data, validation, method, hyperparameters with what
// "auto" means — read from the server's own API schema — suffix), with the memory and time estimate first.
import { get, post } from "./api.js";
import { alertBox, badge, bytes, errorBox, field, h, mount, table, when } from "./ui.js";

export async function list(main) {
  document.title = "Jobs — tuneforge";
  const box = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  mount(main, h("div", { class: "row" }, h("h1", {}, "Fine-tuning jobs"), h("a", { class: "button", href: "#/jobs/new" }, "New job")), box);
  const { data } = await get("/v1/fine_tuning/jobs?limit=100");
  mount(box, data.length ? table(["Job", "Status", "Base", "Method", "Created", "Model"], data.map((j) => [
    h("a", { href: `#/jobs/${j.id}` }, j.id), badge(j.status), j.model, `${j.method.type} · ${j.training_type}`,
    when(j.created_at), j.fine_tuned_model ? h("code", {}, j.fine_tuned_model) : "—",
  ])) : h("p", { class: "muted" }, "No jobs yet. Upload a dataset, then start one."));
}

const DRAFT = "tuneforge.newjob";
// A reinforcement job's grader, as OpenAI's API takes it (README: "Reinforcement jobs" says what maps).
const GRADER_EXAMPLE = JSON.stringify({ type: "string_check", name: "answer", input: "{{sample.output_text}}", reference: "{{item.reference_answer}}", operation: "eq" }, null, 1);
const HP = ["n_epochs", "batch_size", "learning_rate_multiplier", "validation_split", "test_split", "lora_rank", "lora_alpha", "max_steps"];

function described(doc, name) {
  const props = (doc.components.schemas.HyperparametersIn || {}).properties || {};
  return (props[name] && props[name].description) || "";
}

export async function create(main, params) {
  document.title = "New job — tuneforge";
  mount(main, h("p", { class: "muted" }, "Loading…"));
  const [models, files, doc] = await Promise.all([get("/v1/models"), get("/v1/files?purpose=fine-tune"), get("/openapi.json")]);
  const bases = models.data.filter((m) => m.owned_by === "tuneforge").map((m) => m.id);
  const methods = doc.components.schemas.JobCreate.properties.training_type.enum || ["lora"];
  const draft = JSON.parse(sessionStorage.getItem(DRAFT) || "{}");
  const fileOptions = (chosen, none) => [none ? h("option", { value: "" }, none) : null,
    ...files.data.map((f) => h("option", { value: f.id, selected: f.id === chosen }, `${f.filename} (${bytes(f.bytes)}, ${f.id})`))];
  const c = {
    model: h("select", { name: "model" }, bases.map((b) => h("option", { value: b, selected: b === draft.model }, b))),
    training_file: h("select", { name: "training_file", required: true }, fileOptions(params.get("file") || draft.training_file, files.data.length ? null : "no files: upload one first")),
    validation_file: h("select", { name: "validation_file" }, fileOptions(draft.validation_file, "none: hold out a share of the training file")),
    training_type: h("select", { name: "training_type" }, methods.map((m) => h("option", { value: m, selected: m === (draft.training_type || "lora") }, m))),
    method: h("select", { name: "method" }, [["supervised", "supervised (chat or prompt/completion records)"], ["dpo", "dpo (preference pairs)"], ["kto", "kto (answers rated up or down)"], ["reinforcement", "reinforcement (GRPO: a grader scores sampled answers)"]]
      .map(([v, t]) => h("option", { value: v, selected: v === (draft.method || "supervised") }, t))),
    grader: h("textarea", { name: "grader", rows: 6, spellcheck: "false", placeholder: GRADER_EXAMPLE }, draft.grader || ""),
    suffix: h("input", { name: "suffix", maxlength: 64, pattern: "[A-Za-z0-9._\\-]+", value: draft.suffix || "", placeholder: "e.g. tickets-v1" }),
  };
  const hp = {};
  for (const name of HP) {
    const auto = ["n_epochs", "batch_size", "learning_rate_multiplier", "validation_split"].includes(name);
    const placeholder = auto ? "auto" : name === "test_split" ? "none (no report)" : "default";
    hp[name] = h("input", { name, inputmode: "decimal", value: draft[name] ?? "", placeholder });
  }
  const status = h("div", { id: "form-status", "aria-live": "polite" });
  const estimateBox = h("div", { id: "estimate", "aria-live": "polite" });

  const body = () => {
    const hyper = {};
    for (const [name, input] of Object.entries(hp)) {
      const v = input.value.trim();
      if (v === "" || v === "auto") { if (["n_epochs", "batch_size", "learning_rate_multiplier"].includes(name)) hyper[name] = "auto"; continue; }
      hyper[name] = Number(v);
    }
    const type = c.method.value;
    const out = {
      model: c.model.value,
      training_file: c.training_file.value,
      training_type: c.training_type.value,
      method: { type, [type]: { hyperparameters: hyper } },
    };
    if (type === "reinforcement") {
      try {
        out.method.reinforcement.grader = JSON.parse(c.grader.value || GRADER_EXAMPLE);
      } catch (e) {
        throw Object.assign(new Error(`The grader is not JSON: ${e.message}`), { param: "grader" });
      }
    }
    if (c.validation_file.value) out.validation_file = c.validation_file.value;
    if (c.suffix.value.trim()) out.suffix = c.suffix.value.trim();
    return out;
  };
  const save = () => {
    const d = Object.fromEntries([...Object.entries(c), ...Object.entries(hp)].map(([k, el]) => [k, el.value]));
    sessionStorage.setItem(DRAFT, JSON.stringify(d));
  };

  const estimate = async () => {
    mount(estimateBox, alertBox("warn", "Estimating memory and time (the model is prepared and a few steps are measured)…"));
    try {
      const e = await post("/v1/fine_tuning/jobs/estimate", body());
      mount(estimateBox, estimateView(e));
      start.disabled = !e.fits; // until the form changes: a job that cannot fit would fail in the worker
      return e;
    } catch (err) {
      mount(estimateBox, errorBox(err));
      return null;
    }
  };

  const start = h("button", { type: "submit" }, "Start job");
  const graderField = field("Grader (JSON)", c.grader, "What scores each sampled answer: string_check (eq) on an item field, multi (a weighted sum), or tuneforge's json_valid, exact_match, field_match, regex. Empty: the example shown.");
  graderField.hidden = c.method.value !== "reinforcement";
  const form = h("form", {
    oninput: () => { save(); start.disabled = false; graderField.hidden = c.method.value !== "reinforcement"; },
    onsubmit: async (ev) => {
      ev.preventDefault();
      mount(status);
      try {
        const job = await post("/v1/fine_tuning/jobs", body());
        sessionStorage.removeItem(DRAFT);
        location.hash = `#/jobs/${job.id}`;
      } catch (err) {
        mount(status, errorBox(err)); // the form keeps everything typed
        const bad = err.param && form.querySelector(`[name="${err.param.split(".").pop()}"]`);
        if (bad) bad.focus();
      }
    },
  },
  h("fieldset", {}, h("legend", {}, "Model and data"), h("div", { class: "fields" },
    field("Base model", c.model, "A base model this server offers."),
    field("Training file", c.training_file),
    field("Validation file", c.validation_file, "Optional. Without one, a share of the training file is held out (below)."),
    field("Validation share", hp.validation_split, described(doc, "validation_split") || "auto: 10%. The guides suggest 10-20%."),
    field("Test share (before/after report)", hp.test_split, described(doc, "test_split")))),
  h("fieldset", {}, h("legend", {}, "Method"), h("div", { class: "fields" },
    field("Method", c.training_type, "lora: small adapters on a shared base (default); full: every weight; dora, ia3 …"),
    field("Objective", c.method),
    graderField,
    field("LoRA rank", hp.lora_rank, described(doc, "lora_rank")),
    field("LoRA alpha", hp.lora_alpha, described(doc, "lora_alpha")))),
  h("fieldset", {}, h("legend", {}, "Hyperparameters"), h("div", { class: "fields" },
    field("Epochs", hp.n_epochs, described(doc, "n_epochs")),
    field("Batch size", hp.batch_size, described(doc, "batch_size")),
    field("Learning rate multiplier", hp.learning_rate_multiplier, described(doc, "learning_rate_multiplier")),
    field("Max steps", hp.max_steps, described(doc, "max_steps")))),
  field("Suffix", c.suffix, "Added to the fine-tuned model's name: letters, digits, . _ -"),
  estimateBox,
  status,
  h("p", { class: "row" },
    h("button", { type: "button", class: "secondary", onclick: estimate }, "Estimate memory and time"),
    start));
  mount(main, h("h1", {}, "New fine-tuning job"), form);
}

function estimateView(e) {
  const gb = (b) => `${(b / 1e9).toFixed(2)} GB`;
  const lines = [
    h("p", {}, h("strong", {}, `Peak memory ${gb(e.peak_bytes)}`), ` of ${gb(e.available_bytes)} available on ${e.device}`,
      e.seconds_total ? ` · about ${Math.round(e.seconds_total)} s for ${e.total_steps} steps` : ` · ${e.total_steps} steps`),
    h("ul", {}, Object.entries(e.parts || {}).map(([k, v]) => h("li", {}, `${k}: ${gb(v)}`))),
  ];
  if (!e.fits) return alertBox("error", h("strong", {}, "This job would not fit in memory. "), (e.suggestions || []).join("; "), ...lines);
  return alertBox("ok", ...lines);
}
