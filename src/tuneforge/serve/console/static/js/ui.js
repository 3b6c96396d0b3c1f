// DOM helpers: elements are built with h() (text is always set as text, never parsed as HTML).
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2).toLowerCase(), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
}

export function mount(target, ...children) {
  target.replaceChildren();
  append(target, children);
}

let uid = 0;
// A labelled form field: the label names the control, the hint says what "auto" or an empty value means.
export function field(labelText, control, hint) {
  const id = control.id || `f${++uid}`;
  control.id = id;
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) control.setAttribute("aria-describedby", hintId);
  return h("div", {}, h("label", { for: id }, labelText), hint ? h("span", { class: "hint", id: hintId }, hint) : null, control);
}

export function alertBox(kind, ...children) {
  return h("div", { class: `alert ${kind}`, role: kind === "error" ? "alert" : "status" }, ...children);
}

export function errorBox(err) {
  const where = err.param ? ` (${err.param})` : "";
  return alertBox("error", h("strong", {}, err.status ? `Error ${err.status}${where}: ` : "Error: "), err.message);
}

export function toast(message, kind = "ok") {
  const box = document.getElementById("toast");
  const el = alertBox(kind, message);
  box.append(el);
  setTimeout(() => el.remove(), 4000);
}

export function badge(status) {
  return h("span", { class: `badge ${status}` }, status.replace("_", " "));
}

export function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "—";
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function copyButton(text, what = "text") {
  return h("button", {
    type: "button", class: "secondary", "aria-label": `Copy ${what}`,
    onclick: async (e) => {
      try { await navigator.clipboard.writeText(text); toast(`Copied ${what}`); }
      catch { window.prompt(`Copy the ${what}:`, text); }
      e.target.focus();
    },
  }, "Copy");
}

export function table(columns, rows, caption) {
  // focusable: a table wider than a phone scrolls sideways, which keyboard users must be able to do too
  return h("div", { class: "scroll", tabindex: "0", role: "region", "aria-label": caption || columns.join(", ") }, h("table", {},
    caption ? h("caption", { class: "muted" }, caption) : null,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((cell) => h("td", {}, cell)))))));
}

// Chat turns as the model sees them: role, then the text.
export function turns(messages, extraClass = "") {
  return (messages || []).map((m) => h("div", { class: `turn ${m.role} ${extraClass}` }, h("span", { class: "role" }, m.role), m.content));
}
