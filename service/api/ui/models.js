// Models and adapters: lineage (base -> fine-tuned models and adapters), accuracy, size;
// download or delete an adapter; import a PEFT adapter from files.

import { download, getJSON, request, sendForm } from "./api.js";
import { h, listAll, num, pct, showError } from "./dom.js";

function modelItem(m, models, adapters, actions) {
  const kids = models.filter((c) => c.parent_id === m.id);
  const mine = adapters.filter((a) => a.base_model_id === m.id);
  return h("li", { "data-model": m.id },
    h("strong", {}, m.id), ` · ${m.kind} · digits ${m.classes.join(",")} · ${num(m.n_parameters)} parameters · test ${pct(m.test_accuracy)}`,
    m.job_id ? [" · ", h("a", { href: `#/jobs/${m.job_id}` }, "job")] : "",
    kids.length || mine.length ? h("ul", { className: "tree" },
      kids.map((c) => modelItem(c, models, adapters, actions)),
      mine.map((a) => h("li", { "data-adapter": a.id },
        "adapter ", h("strong", {}, a.id), ` · ${a.source} · r ${a.r}, alpha ${a.lora_alpha} on ${a.target_modules.join("+")} · `,
        `digits ${a.classes.join(",")} · ${num(a.trainable_parameters)} trainable (${((100 * a.trainable_parameters) / m.n_parameters).toFixed(2)} %) · test ${pct(a.test_accuracy)} `,
        a.job_id ? [h("a", { href: `#/jobs/${a.job_id}` }, "job"), " "] : "",
        h("button", { type: "button", className: "secondary", onclick: () => actions.download(a) }, "Download"), " ",
        h("button", { type: "button", className: "danger", onclick: () => actions.remove(a), "aria-label": `Delete adapter ${a.id}` }, "Delete")))) : "");
}

export async function render(main) {
  const errors = h("div");
  const tree = h("ul", { className: "tree", id: "lineage" });
  const status = h("div", { "aria-live": "polite" });
  const baseSelect = h("select", { id: "imp-base", name: "base_model_id", required: true });

  const actions = {
    download: (a) => download(`/adapters/${a.id}/archive`, `${a.id}.zip`).catch((e) => showError(errors, e)),
    async remove(a) {
      if (!confirm(`Delete adapter ${a.id} and its files?`)) return;
      try {
        await request(`/adapters/${encodeURIComponent(a.id)}`, { method: "DELETE" });
        await draw();
      } catch (error) {
        showError(errors, error);
      }
    },
  };

  async function draw() {
    const [models, adapters] = await Promise.all([listAll(getJSON, "/models"), listAll(getJSON, "/adapters")]);
    const ids = new Set(models.map((m) => m.id));
    const roots = models.filter((m) => !m.parent_id || !ids.has(m.parent_id));
    tree.replaceChildren(...roots.map((m) => modelItem(m, models, adapters, actions)));
    const orphans = adapters.filter((a) => !ids.has(a.base_model_id));
    if (orphans.length) tree.append(h("li", {}, `${orphans.length} adapter(s) of unknown models`));
    if (!models.length) tree.append(h("li", { className: "muted" }, "No models yet."));
    const chosen = baseSelect.value;
    baseSelect.replaceChildren(...models.map((m) => h("option", { value: m.id }, m.id)));
    if (chosen) baseSelect.value = chosen;
  }

  async function importAdapter(ev) {
    ev.preventDefault();
    showError(status, null);
    const form = new FormData(ev.target);
    if (!form.get("classes")) form.delete("classes");
    try {
      const a = await sendForm("/adapters", form);
      status.replaceChildren(h("p", { className: "ok", role: "status" }, `Imported adapter ${a.id} (${num(a.trainable_parameters)} trainable parameters).`));
      ev.target.reset();
      await draw();
    } catch (error) {
      showError(status, error);
    }
  }

  main.append(h("h1", {}, "Models and adapters"), errors, tree,
    h("form", { id: "import-form", onsubmit: importAdapter, "aria-labelledby": "imp-title" },
      h("h2", { id: "imp-title" }, "Import a PEFT adapter"),
      h("div", { className: "fields" },
        h("div", {}, h("label", { for: "imp-base" }, "Base model"), baseSelect),
        h("div", {}, h("label", { for: "imp-files" }, "adapter_config.json + adapter_model.safetensors, or one .zip"),
          h("input", { id: "imp-files", name: "files", type: "file", multiple: true, required: true })),
        h("div", {}, h("label", { for: "imp-classes" }, "Classes (optional, e.g. 5,6,7,8,9)"),
          h("input", { id: "imp-classes", name: "classes", type: "text" }))),
      h("button", { type: "submit" }, "Import"), status));
  await draw();
}
