// The console's one way to the server: the public /v1 API with the signed-in key. Errors come back as ApiError
// with the server's own message (OpenAI's error shape), so every page can show what went wrong and how to fix it.
const KEY = "tuneforge.key";

export const key = {
  get: () => sessionStorage.getItem(KEY),
  set: (k) => sessionStorage.setItem(KEY, k),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || (typeof body === "string" && body) || `HTTP ${status}`);
    this.status = status;
    this.param = e.param || null;
    this.code = e.code || null;
  }
}

function headers(extra = {}, k = key.get()) {
  return k ? { Authorization: `Bearer ${k}`, ...extra } : extra;
}

async function parse(res) {
  const text = await res.text();
  let body = text;
  try { body = text ? JSON.parse(text) : null; } catch { /* not JSON: keep the text */ }
  if (!res.ok) {
    if (res.status === 422 && body && Array.isArray(body.detail)) {
      // FastAPI's request validation: name each field and its problem
      const msg = body.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
      throw new ApiError(422, { error: { message: msg, param: (body.detail[0].loc || []).slice(1).join(".") } });
    }
    throw new ApiError(res.status, body);
  }
  return body;
}

export async function call(method, path, body, { signal, apiKey } = {}) {
  const init = { method, headers: headers({}, apiKey ?? key.get()), signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, { error: { message: `The server did not answer (${e.message}). Is tuneforge serve running?` } });
  }
  return parse(res);
}

export const get = (path, opts) => call("GET", path, undefined, opts);
export const post = (path, body, opts) => call("POST", path, body ?? {}, opts);
export const del = (path, opts) => call("DELETE", path, undefined, opts);

// Upload through XMLHttpRequest: fetch has no upload progress.
export function upload(file, purpose, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/files");
    xhr.setRequestHeader("Authorization", `Bearer ${key.get()}`);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onerror = () => reject(new ApiError(0, { error: { message: "The upload was interrupted: the server closed the connection." } }));
    xhr.onload = () => {
      let body = xhr.responseText;
      try { body = JSON.parse(body); } catch { /* keep the text */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body));
    };
    const form = new FormData();
    form.append("purpose", purpose);
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

// A streamed chat completion: calls onDelta(text) for every piece of the answer as the server sends it.
export async function streamChat(body, onDelta, signal) {
  const res = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!res.ok) return parse(res);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let usage = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return usage;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(500, chunk);
        if (chunk.usage) usage = chunk.usage;
        const piece = chunk.choices && chunk.choices[0] && chunk.choices[0].delta && chunk.choices[0].delta.content;
        if (piece) onDelta(piece);
      }
    }
  }
  return usage;
}
