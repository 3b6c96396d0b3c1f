// Models: the base models and your fine-tuned ones, the id to copy, a ready `openai` snippet for this server,
// exports (merged / GGUF / GGUF LoRA / Ollama) with their verification, and delete.
import { del, get, key, post } from "./api.js";
import { onLeave } from "./app.js";
import { badge, copyButton, errorBox, h, mount, table, toast, when } from "./ui.js";

const FORMATS = ["merged", "gguf", "gguf-lora", "ollama"];

export function snippet(model) {
  return `from openai import OpenAI

client = OpenAI(base_url="${location.origin}/v1", api_key="YOUR_KEY")
answer = client.chat.completions.create(
    model="${model}",
    messages=[{"role": "user", "content": "Hello!"}],
)
print(answer.choices[0].message.content)`;
}

export async function list(main) {
  document.title = "Models — tuneforge";
  const status = h("div", { "aria-live": "polite" });
  const modelsBox = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const exportsBox = h("div", { id: "exports" });
  const code = h("pre", { id: "snippet" });
  mount(main, h("h1", {}, "Models"), status, modelsBox,
    h("h2", {}, "Call a model from Python"), h("p", { class: "muted" }, "With the official openai client; any OpenAI-compatible client works the same way."),
    code, h("h2", {}, "Exports"), exportsBox);
  let timer = null;
  onLeave(() => clearTimeout(timer));

  const { data } = await get("/v1/models");
  const tuned = data.filter((m) => m.owned_by !== "tuneforge");
  const show = (m) => { code.textContent = snippet(m); code.append(" ", copyButton(snippet(m).replace("YOUR_KEY", key.get()), "snippet with your key")); };
  show((tuned[0] || data[0] || { id: "MODEL" }).id);

  mount(modelsBox, table(["Model id", "Kind", "Base", "Created", ""], data.map((m) => {
    const base = m.owned_by === "tuneforge";
    const format = h("select", { "aria-label": `Export format for ${m.id}` }, FORMATS.map((f) => h("option", { value: f }, f)));
    return [
      h("span", {}, h("code", {}, m.id), " ", copyButton(m.id, "model id")),
      base ? "base" : "fine-tuned", m.root || "—", when(m.created),
      h("span", { class: "row" },
        h("button", { type: "button", class: "secondary", onclick: () => show(m.id) }, "Snippet"),
        h("a", { class: "button secondary", href: `#/playground?${base ? "a" : "b"}=${encodeURIComponent(m.id)}` }, "Playground"),
        base ? null : [format, h("button", {
          type: "button", class: "secondary",
          onclick: async () => {
            try { await post(`/v1/models/${m.id}/exports`, { format: format.value }); toast(`Export to ${format.value} queued`); refreshExports(); }
            catch (e) { mount(status, errorBox(e)); }
          },
        }, "Export"), h("button", {
          type: "button", class: "danger",
          onclick: async () => {
            if (!window.confirm(`Delete ${m.id}? Requests for it will fail.`)) return;
            try { await del(`/v1/models/${m.id}`); toast(`Deleted ${m.id}`); list(main); }
            catch (e) { mount(status, errorBox(e)); }
          },
        }, "Delete")]),
    ];
  })));

  async function refreshExports() {
    clearTimeout(timer);
    const ex = await get("/v1/exports?limit=100");
    mount(exportsBox, ex.data.length ? table(["Export", "Model", "Format", "Status", "Verification", ""], ex.data.map((e) => [
      h("code", {}, e.id), e.model, e.format + (e.quant ? ` ${e.quant}` : ""), badge(e.status), e.verification_status || "—",
      e.status === "succeeded" ? h("button", { type: "button", class: "secondary", onclick: () => download(e) }, "Download") : (e.error ? e.error.message : ""),
    ])) : h("p", { class: "muted" }, "None yet: export a fine-tuned model above."));
    if (ex.data.some((e) => e.status === "queued" || e.status === "running")) timer = setTimeout(refreshExports, 2000);
  }
  await refreshExports();
}

// The download needs the key in a header, so it is fetched and handed to the browser as a file.
async function download(e) {
  const res = await fetch(`/v1/exports/${e.id}/content`, { headers: { Authorization: `Bearer ${key.get()}` } });
  if (!res.ok) { toast(`Download failed: HTTP ${res.status}`, "error"); return; }
  const name = (res.headers.get("Content-Disposition") || "").match(/filename="?([^"]+)"?/);
  const url = URL.createObjectURL(await res.blob());
  const a = h("a", { href: url, download: name ? name[1] : `${e.id}` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
