// Tiny DOM helpers shared by the pages.

/** h("a", {href: "#"}, "text", child...): an element; attrs starting with "on" are listeners. */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "className") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c != null) node.append(c instanceof Node ? c : String(c));
  return node;
}

/** An error (ApiError or other) as a visible, announced notice. */
export function errorBox(error) {
  return h("p", { className: "notice error", role: "alert" }, String(error));
}

/** Show `error` in `slot` (replacing what was there); `null` clears it. */
export function showError(slot, error) {
  slot.replaceChildren(...(error ? [errorBox(error)] : []));
}

export const pct = (v) => (v == null ? "–" : `${(v * 100).toFixed(2)} %`);
export const num = (v) => (v == null ? "–" : Number(v).toLocaleString("en-US"));
export function duration(seconds) {
  if (seconds == null) return "–";
  const s = Math.round(seconds);
  return s < 60 ? `${s} s` : s < 3600 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${(s / 3600).toFixed(1)} h`;
}
export const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
export const statusCell = (s) => h("span", { className: `status status-${s}` }, s);

/** GET all pages of a list endpoint (`/models`, `/adapters`), 100 at a time. */
export async function listAll(getJSON, path) {
  const items = [];
  for (let offset = 0; ; offset += 100) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await getJSON(`${path}${sep}limit=100&offset=${offset}`);
    items.push(...page.items);
    if (items.length >= page.total || !page.items.length) return items;
  }
}
