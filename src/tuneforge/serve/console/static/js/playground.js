// Playground: two models answer the same prompt side by side, each streaming its tokens as they come — the base
// beside the fine-tuned model, or two versions. Opened from a finished job with both already chosen.
import { get, streamChat } from "./api.js";
import { onLeave } from "./app.js";
import { errorBox, field, h, mount } from "./ui.js";

export async function page(main, params) {
  document.title = "Playground — tuneforge";
  const { data } = await get("/v1/models");
  const ids = data.map((m) => m.id);
  const tuned = data.filter((m) => m.owned_by !== "tuneforge");
  const pick = (name, chosen) => h("select", { name }, ids.map((id) => h("option", { value: id, selected: id === chosen }, id)));
  const a = pick("model_a", params.get("a") || (tuned[0] ? tuned[0].root : ids[0]));
  const b = pick("model_b", params.get("b") || (tuned.length ? tuned[tuned.length - 1].id : ids[0]));
  const system = h("textarea", { name: "system", rows: 2, placeholder: "optional" });
  const prompt = h("textarea", { name: "prompt", rows: 4, required: true, placeholder: "Ask both models the same thing" });
  const maxTokens = h("input", { name: "max_tokens", type: "number", min: 1, max: 4096, value: 128 });
  const temperature = h("input", { name: "temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0 });
  const sides = [a, b].map((sel, i) => ({
    sel,
    out: h("div", { class: "answer", id: `answer-${"ab"[i]}`, "aria-live": "polite" }),
    info: h("p", { class: "muted", id: `usage-${"ab"[i]}` }),
  }));
  let controller = null;
  onLeave(() => controller && controller.abort());
  const send = h("button", { type: "submit" }, "Send to both");
  const stop = h("button", { type: "button", class: "secondary", disabled: true, onclick: () => controller && controller.abort() }, "Stop");

  const run = async (side, messages, signal) => {
    side.out.textContent = "";
    side.info.textContent = "…";
    const t0 = performance.now();
    let first = null;
    try {
      const usage = await streamChat({ model: side.sel.value, messages, max_tokens: Number(maxTokens.value), temperature: Number(temperature.value) },
        (piece) => { first ??= performance.now(); side.out.textContent += piece; }, signal);
      const secs = (performance.now() - t0) / 1000;
      side.info.textContent = `${usage ? `${usage.completion_tokens} tokens, ` : ""}${secs.toFixed(1)} s` + (first ? `, first token after ${((first - t0) / 1000).toFixed(2)} s` : "");
    } catch (e) {
      side.info.textContent = "";
      if (e.name === "AbortError") { side.info.textContent = "stopped"; return; }
      side.out.replaceChildren(errorBox(e));
    }
  };

  const form = h("form", {
    onsubmit: async (ev) => {
      ev.preventDefault();
      const messages = [...(system.value.trim() ? [{ role: "system", content: system.value }] : []), { role: "user", content: prompt.value }];
      controller = new AbortController();
      send.disabled = true; stop.disabled = false;
      await Promise.all(sides.map((s) => run(s, messages, controller.signal)));
      send.disabled = false; stop.disabled = true;
    },
  },
  h("div", { class: "fields" }, field("Model A", a), field("Model B", b), field("Max tokens", maxTokens), field("Temperature", temperature, "0: greedy, the same answer every time")),
  field("System prompt", system), field("Prompt", prompt),
  h("p", { class: "row" }, send, stop));
  mount(main, h("h1", {}, "Playground"), form,
    h("div", { class: "grid2" }, sides.map((s, i) => h("section", { class: "card", "aria-label": `Answer of model ${"AB"[i]}` },
      h("h2", {}, `Model ${"AB"[i]}`), s.out, s.info))));
}
