// Comparison: a sweep's accuracy vs trainable parameters (with 95 % intervals) and its
// table; or, without sweeps, the adapters and fine-tuned models of one base model.

import { getJSON } from "./api.js";
import { scatterChart } from "./charts.js";
import { duration, h, listAll, num, pct, showError, statusCell } from "./dom.js";

const interval = (s) => (s.mean == null ? "–" : s.ci_low == null ? pct(s.mean)
  : `${pct(s.mean)} [${pct(s.ci_low)}, ${pct(s.ci_high)}]`);

function table(id, head, rows) {
  return h("table", { id }, h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))));
}

function sweepView(sweep) {
  const points = sweep.variants.filter((v) => v.trainable_parameters && v.test_accuracy.mean != null)
    .map((v) => ({ label: v.name, x: v.trainable_parameters, y: v.test_accuracy.mean,
      lo: v.test_accuracy.ci_low, hi: v.test_accuracy.ci_high, group: v.kind }));
  const p = sweep.progress;
  return [
    h("p", {}, statusCell(sweep.status), ` · ${p.jobs_created}/${p.jobs_planned} jobs · `,
      h("progress", { max: 1, value: p.fraction, "aria-label": "sweep progress" }),
      ` · wall ${duration(sweep.wall_seconds)} · base parameters ${num(sweep.base_parameters)}`),
    scatterChart("Test accuracy vs trainable parameters", "trainable parameters (log scale)", "test accuracy", points),
    h("p", { className: "muted" }, sweep.interval_note),
    table("compare-table", ["Variant", "Kind", "Trainable params", "% of base", "Test accuracy (95 % CI)",
      "Base digits accuracy", "Val accuracy", "Train time", "Runs"],
    sweep.variants.map((v) => [v.name, v.kind, num(v.trainable_parameters),
      v.percent_of_base == null ? "–" : `${v.percent_of_base.toFixed(2)} %`, interval(v.test_accuracy),
      interval(v.base_accuracy), interval(v.val_accuracy), duration(v.train_seconds.mean),
      `${v.test_accuracy.n}/${v.jobs_planned}`])),
  ];
}

function baseView(base, models, adapters) {
  const tuned = models.filter((m) => m.parent_id === base.id);
  const mine = adapters.filter((a) => a.base_model_id === base.id);
  const rows = [
    ...tuned.map((m) => ({ label: m.id, kind: "finetune_full", params: m.n_parameters, acc: m.test_accuracy, extra: "all weights" })),
    ...mine.map((a) => ({ label: a.id, kind: "finetune_lora", params: a.trainable_parameters, acc: a.test_accuracy,
      extra: `r ${a.r}, alpha ${a.lora_alpha}, ${a.target_modules.join("+")}` })),
  ];
  const points = rows.filter((r) => r.acc != null && r.params).map((r) => ({ label: r.label, x: r.params, y: r.acc, group: r.kind }));
  return [
    scatterChart("Test accuracy vs trainable parameters", "trainable parameters (log scale)", "test accuracy", points),
    table("compare-table", ["Model or adapter", "Kind", "Trainable params", "% of base", "Test accuracy", "Details"],
      rows.map((r) => [r.label, r.kind, num(r.params), `${((100 * r.params) / base.n_parameters).toFixed(2)} %`, pct(r.acc), r.extra])),
  ];
}

export async function render(main) {
  const errors = h("div");
  const view = h("div", { id: "compare-view" });
  const [sweeps, models, adapters] = await Promise.all([
    listAll(getJSON, "/sweeps"), listAll(getJSON, "/models"), listAll(getJSON, "/adapters")]);
  const bases = models.filter((m) => !m.parent_id);
  const choice = h("select", { id: "compare-source" },
    sweeps.map((s) => h("option", { value: `sweep:${s.id}` }, `sweep ${s.id} (${s.status})`)),
    bases.map((m) => h("option", { value: `base:${m.id}` }, `fine-tunes of ${m.id}`)));

  async function draw() {
    showError(errors, null);
    const [type, id] = choice.value.split(/:(.*)/s);
    try {
      if (type === "sweep") view.replaceChildren(...sweepView(await getJSON(`/sweeps/${id}`)));
      else view.replaceChildren(...baseView(bases.find((m) => m.id === id), models, adapters));
    } catch (error) {
      showError(errors, error);
    }
  }

  choice.addEventListener("change", draw);
  main.append(h("h1", {}, "Comparison"),
    h("div", { className: "row" }, h("div", {}, h("label", { for: "compare-source" }, "Compare"), choice)),
    errors, view);
  if (!choice.options.length) view.append(h("p", { className: "muted" }, "No sweeps and no models yet: run a sweep (POST /sweeps) or train a base."));
  else await draw();
}
