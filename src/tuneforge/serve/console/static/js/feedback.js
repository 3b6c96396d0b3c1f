// Feedback: stored completions (those asked with store: true, or kept by a deployment that stores), each with
// its question, answer and ratings; rate an answer or correct it here; turn the ratings into KTO / DPO / SFT
// training files (POST /v1/feedback/datasets) that open on the datasets page.
import { get, post } from "./api.js";
import { alertBox, errorBox, field, h, mount, table, toast, when } from "./ui.js";

const REVIEWER = "console"; // the `user` of ratings given here: one verdict per completion, replaced on change

export async function list(main) {
  document.title = "Feedback — tuneforge";
  const status = h("div", { "aria-live": "polite" });
  const box = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const make = h("button", { type: "button", onclick: () => build(status) }, "Make training files from feedback");
  mount(main, h("h1", {}, "Feedback"),
    h("p", { class: "muted" }, "Answers kept with store: true (or by a deployment that stores). Rate them here or through POST /v1/chat/completions/{id}/feedback."),
    h("p", { class: "row" }, make), status, box);
  const { data } = await get("/v1/chat/completions?limit=50");
  if (!data.length) {
    mount(box, h("p", { class: "muted" }, 'No stored completions yet: send chat completions with "store": true, or create a deployment with "store": true.'));
    return;
  }
  mount(box, data.map(card));
}

function card(c) {
  const answer = c.choices[0] && c.choices[0].message ? c.choices[0].message.content : "";
  const details = h("div", { class: "stored-detail" });
  const el = h("details", { class: "card stored", id: `stored-${c.id}` },
    h("summary", {}, h("code", {}, c.model), c.deployment ? ` via ${c.deployment}` : "", ` · ${when(c.created)}`, c.user ? ` · user ${c.user}` : "",
      h("div", { class: "answer" }, answer)),
    details);
  el.addEventListener("toggle", () => { if (el.open && !details.childElementCount) open(c, answer, details); });
  return el;
}

async function open(c, answer, details) {
  const [msgs, fb] = await Promise.all([get(`/v1/chat/completions/${c.id}/messages`), get(`/v1/chat/completions/${c.id}/feedback`)]);
  const ratings = h("div");
  const showRatings = (items) => mount(ratings, items.length ? table(["User", "Thumbs", "Score", "Correction", "Comment"], items.map((f) => [
    f.user || "—", f.thumbs || "—", f.score ?? "—", f.correction || "—", f.comment || "—"])) : h("p", { class: "muted" }, "No ratings yet."));
  showRatings(fb.data);
  const status = h("div", { "aria-live": "polite" });
  const correction = h("textarea", { rows: 3, name: "correction", placeholder: answer });
  const send = async (body) => {
    try {
      await post(`/v1/chat/completions/${c.id}/feedback`, { user: REVIEWER, ...body });
      showRatings((await get(`/v1/chat/completions/${c.id}/feedback`)).data);
      mount(status);
      toast("Feedback saved");
    } catch (e) { mount(status, errorBox(e)); }
  };
  mount(details,
    h("h3", {}, "Conversation"),
    msgs.data.map((m) => h("div", { class: `turn ${m.role}` }, h("span", { class: "role" }, m.role), m.content || "")),
    h("div", { class: "turn assistant" }, h("span", { class: "role" }, `answer (${c.model})`), answer),
    h("h3", {}, "Ratings"), ratings,
    h("p", { class: "row" },
      h("button", { type: "button", class: "secondary", onclick: () => send({ thumbs: "up" }) }, "👍 Good answer"),
      h("button", { type: "button", class: "secondary", onclick: () => send({ thumbs: "down" }) }, "👎 Bad answer")),
    field("Correct answer", correction, "What it should have said: a DPO pair (correction preferred) and an SFT row"),
    h("p", {}, h("button", { type: "button", onclick: () => correction.value.trim() && send({ thumbs: "down", correction: correction.value }) }, "Save correction")),
    status);
}

async function build(status) {
  mount(status, alertBox("warn", "Building training files from the feedback…"));
  try {
    const r = await post("/v1/feedback/datasets", {});
    const files = Object.entries(r.files);
    mount(status, alertBox("ok",
      h("p", {}, files.length ? "Written (purpose fine-tune): " : "No file written: not enough feedback yet.",
        files.map(([kind, id]) => [h("a", { href: `#/datasets/${id}` }, `${kind} ${id}`), " "])),
      h("pre", {}, JSON.stringify(r.counts, null, 1))));
  } catch (e) { mount(status, errorBox(e)); }
}
