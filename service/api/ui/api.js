// The public REST API from the browser: bearer key per tab, error envelopes as exceptions,
// a Server-Sent Events reader on fetch() (EventSource cannot send an Authorization header).

const KEY_STORE = "lora-api-key";
let pendingPrompt = null; // one key prompt at a time, shared by concurrent 401s

/** An API answer that was not 2xx: `status`, and the envelope's `code`, `message`, `param`. */
export class ApiError extends Error {
  constructor(status, code, message, param) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
  toString() {
    return `${this.status} ${this.code}: ${this.message}${this.param ? ` (${this.param})` : ""}`;
  }
}

function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function toError(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    /* not JSON */
  }
  const e = body && body.error;
  if (e) return new ApiError(response.status, e.code, e.message, e.param);
  return new ApiError(response.status, "http_error", response.statusText || "Request failed.");
}

/** Ask for a key (the dialog in index.html); resolves true when one was entered. */
function promptForKey(reason) {
  if (pendingPrompt) return pendingPrompt;
  const dialog = document.getElementById("key-dialog");
  const form = dialog.querySelector("form");
  const input = dialog.querySelector("input");
  dialog.querySelector("#key-reason").textContent = reason;
  input.value = "";
  pendingPrompt = new Promise((resolve) => {
    const done = (ok) => {
      form.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("close", onClose);
      if (dialog.open) dialog.close();
      pendingPrompt = null;
      resolve(ok);
    };
    const onSubmit = (ev) => {
      ev.preventDefault();
      if (ev.submitter && ev.submitter.value === "cancel") return done(false);
      sessionStorage.setItem(KEY_STORE, input.value.trim());
      done(true);
    };
    const onClose = () => done(false);
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("close", onClose);
    dialog.showModal();
    input.focus();
  });
  return pendingPrompt;
}

/**
 * fetch() a path of the API with the tab's key. On 401 the key prompt opens (saying why:
 * missing or invalid key) and the request is retried with the new key; cancelling it
 * throws the 401. Any other non-2xx answer throws an ApiError with the API's message.
 */
export async function request(path, options = {}) {
  for (;;) {
    const response = await fetch(path, { ...options, headers: headers(options.headers) });
    if (response.status !== 401) {
      if (!response.ok) throw await toError(response);
      return response;
    }
    const error = await toError(response);
    const had = sessionStorage.getItem(KEY_STORE);
    const reason = had ? `The key you entered was refused: ${error.message}` : error.message;
    if (!(await promptForKey(reason))) throw error;
  }
}

/** GET/POST/DELETE JSON helpers: the parsed body (null for 204). */
export async function getJSON(path) {
  return (await request(path)).json();
}
export async function sendJSON(method, path, body) {
  const options = { method };
  if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers = { "Content-Type": "application/json" };
  }
  const response = await request(path, options);
  return response.status === 204 ? null : response.json();
}
export async function sendForm(path, form) {
  return (await request(path, { method: "POST", body: form })).json();
}

/** Download a protected file (the bearer header is needed, so no plain link). */
export async function download(path, filename) {
  const blob = await (await request(path)).blob();
  const url = URL.createObjectURL(blob);
  const a = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/**
 * Follow `/jobs/{id}/events` live: calls onEvent(event) for each SSE message after `after`,
 * reconnecting (from the last id seen) until the stream ends after the terminal status or
 * `signal` aborts. Resolves when done.
 */
export async function followEvents(jobId, after, onEvent, signal) {
  let last = after;
  while (!signal.aborted) {
    let response;
    try {
      response = await request(`/jobs/${encodeURIComponent(jobId)}/events?after=${last}`, {
        headers: { Accept: "text/event-stream" },
        signal,
      });
    } catch (e) {
      if (signal.aborted) return;
      throw e;
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let terminal = false;
    let received = 0;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = block
            .split("\n")
            .filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).replace(/^ /, ""))
            .join("\n");
          if (!data) continue; // a comment heartbeat
          const event = JSON.parse(data);
          last = event.id;
          received += 1;
          onEvent(event);
          if (event.type === "status" && TERMINAL.has(event.data.status)) terminal = true;
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      await new Promise((r) => setTimeout(r, 1000)); // dropped: reconnect from `last`
      continue;
    }
    if (terminal || received === 0) return; // over, or nothing more to follow
    await new Promise((r) => setTimeout(r, 500));
  }
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
