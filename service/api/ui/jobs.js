// Jobs: the list (filters, live refresh, cancel) and the submit form.

import { getJSON, sendJSON, TERMINAL } from "./api.js";
import { duration, h, listAll, pct, showError, statusCell, when } from "./dom.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
const KINDS = ["pretrain", "finetune_full", "finetune_lora"];
const SPECS = { pretrain: "PretrainSpec", finetune_full: "FinetuneFullSpec", finetune_lora: "FinetuneLoraSpec" };
// The main config fields offered by the form (the others keep their defaults).
const FIELDS = ["classes", "epochs", "max_train_samples", "lr", "weight_decay", "batch_size",
  "hidden1", "hidden2", "dropout", "r", "lora_alpha"];
const REFRESH_MS = 1500;
let schemaRequest = null;

function select(id, label, values) {
  return h("div", {},
    h("label", { for: id }, label),
    h("select", { id }, h("option", { value: "" }, "any"), values.map((v) => h("option", { value: v }, v))));
}

function jobRow(job, onCancel) {
  const p = job.progress;
  const cancellable = !TERMINAL.has(job.status) && !job.cancel_requested;
  return h("tr", { "data-job": job.id },
    h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.id)),
    h("td", {}, job.kind),
    h("td", {}, statusCell(job.status), job.cancel_requested && !TERMINAL.has(job.status) ? " (cancelling)" : ""),
    h("td", {}, h("progress", { max: 1, value: p.fraction, "aria-label": `epoch ${p.epoch} of ${p.epochs}` }),
      ` ${p.epoch}/${p.epochs}`),
    h("td", { className: "num" }, job.status === "running" ? duration(p.eta_seconds) : "–"),
    h("td", { className: "num" }, pct(job.result && job.result.test_accuracy)),
    h("td", {}, job.base_model_id || "–"),
    h("td", {}, when(job.created_at)),
    h("td", {}, cancellable ? h("button", { className: "danger", type: "button", onclick: () => onCancel(job) }, "Cancel") : ""));
}

/** The submit form, its fields and defaults read from the API's OpenAPI schema. */
async function submitForm(onSubmitted) {
  schemaRequest = schemaRequest || getJSON("/openapi.json"); // once per tab: ~85 KB
  const schemas = (await schemaRequest.catch((e) => { schemaRequest = null; throw e; })).components.schemas;
  const models = await listAll(getJSON, "/models");
  const errors = h("div", { "aria-live": "polite" });
  const fields = h("div", { className: "fields" });
  const kind = h("select", { id: "f-kind", name: "kind" }, KINDS.map((k) => h("option", { value: k }, k)));
  const base = h("select", { id: "f-base", name: "base_model_id" },
    h("option", { value: "" }, "newest pre-trained (default)"),
    models.map((m) => h("option", { value: m.id }, `${m.id} (${m.kind}, ${pct(m.test_accuracy)})`)));
  const baseBox = h("div", {}, h("label", { for: "f-base" }, "Base model"), base);

  function drawFields() {
    const props = schemas[SPECS[kind.value]].properties;
    baseBox.hidden = kind.value === "pretrain";
    fields.replaceChildren(...FIELDS.filter((f) => props[f]).map((name) => {
      const prop = props[name];
      const type = prop.type || (prop.anyOf || []).map((t) => t.type).find((t) => t !== "null");
      const has = "default" in prop && prop.default !== null;
      const input = h("input", {
        id: `f-${name}`, name, "data-type": type,
        type: type === "array" ? "text" : "number", step: type === "integer" ? "1" : "any",
        value: has ? (Array.isArray(prop.default) ? prop.default.join(",") : prop.default) : "",
        placeholder: has ? "" : "kind's default",
      });
      return h("div", {}, h("label", { for: input.id }, name), input,
        h("small", {}, has ? `default ${prop.default}` : "default: see description"));
    }));
  }

  async function submit(ev) {
    ev.preventDefault();
    showError(errors, null);
    const config = {};
    for (const input of fields.querySelectorAll("input")) {
      const text = input.value.trim();
      if (!text) continue;
      const t = input.dataset.type;
      config[input.name] = t === "array" ? text.split(/[\s,]+/).filter(Boolean).map(Number)
        : t === "integer" ? parseInt(text, 10) : Number(text);
    }
    const body = { kind: kind.value, config };
    if (kind.value !== "pretrain" && base.value) body.base_model_id = base.value;
    try {
      const job = await sendJSON("POST", "/jobs", body);
      errors.replaceChildren(h("p", { className: "ok", role: "status" }, "Submitted ",
        h("a", { href: `#/jobs/${job.id}` }, job.id), "."));
      onSubmitted();
    } catch (error) {
      showError(errors, error);
    }
  }

  kind.addEventListener("change", drawFields);
  drawFields();
  return h("form", { id: "submit-form", onsubmit: submit, "aria-labelledby": "submit-title" },
    h("h2", { id: "submit-title" }, "Submit a job"),
    h("div", { className: "row" }, h("div", {}, h("label", { for: "f-kind" }, "Kind"), kind), baseBox),
    fields, h("button", { type: "submit" }, "Submit"), errors);
}

export async function render(main) {
  const errors = h("div");
  const body = h("tbody");
  const total = h("span", { className: "muted" });
  const filters = h("div", { className: "row", role: "search" },
    select("filter-status", "Status", STATUSES), select("filter-kind", "Kind", KINDS));
  let timer = null;
  let stopped = false;

  async function cancel(job) {
    try {
      await sendJSON("POST", `/jobs/${job.id}/cancel`);
      refresh();
    } catch (error) {
      showError(errors, error);
    }
  }

  async function refresh() {
    clearTimeout(timer);
    const q = new URLSearchParams({ limit: "50" });
    const status = filters.querySelector("#filter-status").value;
    const kind = filters.querySelector("#filter-kind").value;
    if (status) q.set("status", status);
    if (kind) q.set("kind", kind);
    try {
      const page = await getJSON(`/jobs?${q}`);
      // keep keyboard focus on the same job's link or button across the refresh
      const focused = document.activeElement?.closest?.("#jobs tr[data-job]");
      const focusTag = focused && document.activeElement.tagName;
      body.replaceChildren(...page.items.map((j) => jobRow(j, cancel)));
      if (focused) body.querySelector(`tr[data-job="${focused.dataset.job}"] ${focusTag}`)?.focus();
      if (!page.items.length) body.append(h("tr", {}, h("td", { colspan: 9, className: "muted" }, "No jobs.")));
      total.textContent = `${page.items.length} of ${page.total} shown, newest first, refreshed live`;
      showError(errors, null);
    } catch (error) {
      showError(errors, error);
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  }

  filters.addEventListener("change", refresh);
  main.append(h("h1", {}, "Jobs"), filters, errors,
    h("table", { id: "jobs" },
      h("thead", {}, h("tr", {}, ["Job", "Kind", "Status", "Progress", "ETA", "Test accuracy", "Base", "Created", ""]
        .map((t) => h("th", { scope: "col" }, t)))), body),
    total);
  await refresh();
  try {
    main.append(await submitForm(refresh));
  } catch (error) {
    main.append(h("h2", {}, "Submit a job"), h("p", { className: "notice error" }, String(error)));
  }
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
