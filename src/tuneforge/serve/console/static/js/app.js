// The console's shell: sign-in, navigation, and the page router (#/datasets, #/jobs/ID ...). What a page shows
// comes from the server each time it is opened, so a reload or a second browser sees the same state.
import { ApiError, get, key } from "./api.js";
import { alertBox, errorBox, field, h, mount } from "./ui.js";
import * as datasets from "./datasets.js";
import * as jobs from "./jobs.js";
import * as job from "./job.js";
import * as models from "./models.js";
import * as playground from "./playground.js";
import * as deployments from "./deployments.js";
import * as feedback from "./feedback.js";

const main = document.getElementById("main");
const ROUTES = [
  [/^#\/datasets\/([^/?]+)$/, datasets.detail],
  [/^#\/datasets$/, datasets.list],
  [/^#\/jobs\/new$/, jobs.create],
  [/^#\/jobs\/([^/?]+)$/, job.page],
  [/^#\/jobs$/, jobs.list],
  [/^#\/models$/, models.list],
  [/^#\/playground$/, playground.page],
  [/^#\/deployments$/, deployments.list],
  [/^#\/feedback$/, feedback.list],
];

// Work a page started (pollers, streams) that must stop when the user leaves it.
let cleanups = [];
export function onLeave(fn) { cleanups.push(fn); }

function route() {
  for (const fn of cleanups.splice(0)) fn();
  if (!key.get()) return signIn();
  document.getElementById("nav").hidden = false;
  document.getElementById("who").hidden = false;
  document.getElementById("keyhint").textContent = `key …${key.get().slice(-4)}`;
  const [path, query] = (location.hash || "#/datasets").split("?");
  const params = new URLSearchParams(query || "");
  for (const a of document.querySelectorAll("nav a")) {
    const here = path.startsWith(a.getAttribute("href"));
    if (here) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  for (const [re, page] of ROUTES) {
    const m = path.match(re);
    if (m) {
      const result = page(main, params, ...m.slice(1).map(decodeURIComponent));
      Promise.resolve(result).catch((e) => showError(e));
      return;
    }
  }
  location.hash = "#/datasets";
}

function showError(e) {
  if (e instanceof ApiError && e.status === 401) {
    key.clear();
    return signIn("Your key was refused: " + e.message);
  }
  main.prepend(errorBox(e));
}

function signIn(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  document.title = "Sign in — tuneforge";
  const input = h("input", { type: "password", name: "api_key", autocomplete: "current-password", required: true });
  const status = h("div", { "aria-live": "polite" }, message ? alertBox("error", message) : null);
  const form = h("form", {
    class: "card", style: "max-width:560px",
    onsubmit: async (ev) => {
      ev.preventDefault();
      const k = input.value.trim();
      try {
        await get("/v1/models", { apiKey: k });
      } catch (e) {
        mount(status, errorBox(e.status === 401 ? new ApiError(401, { error: { message: `${e.message} Use a key from the server's TUNEFORGE_API_KEYS.` } }) : e));
        input.focus();
        return;
      }
      key.set(k);
      route();
    },
  },
  h("h1", {}, "Sign in"),
  h("p", { class: "muted" }, "With one of this server's API keys. It is kept in this browser tab only and cleared when you sign out or close the tab."),
  field("API key", input),
  status,
  h("p", {}, h("button", { type: "submit" }, "Sign in")));
  mount(main, form);
  input.focus();
}

document.getElementById("signout").addEventListener("click", () => {
  key.clear();
  location.hash = "#/datasets";
  route();
});
window.addEventListener("hashchange", route);
window.addEventListener("unhandledrejection", (e) => { showError(e.reason); e.preventDefault(); });
route();
