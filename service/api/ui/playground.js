// Playground: draw a digit (mouse, pen or touch) or drop an image; the base model and each
// chosen adapter answer side by side, with the 28 x 28 image the service made of it.

import { getJSON, request } from "./api.js";
import { probabilityBars } from "./charts.js";
import { h, listAll, pct, showError } from "./dom.js";

const SIZE = 280;
const STROKE = 22;

/** The 28 x 28 image of /predict (rows of 0-255) drawn on a small canvas. */
function imageCanvas(rows) {
  const c = h("canvas", { width: 28, height: 28, className: "seen", role: "img", "aria-label": "28 by 28 image the model saw" });
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(28, 28);
  rows.flat().forEach((v, i) => img.data.set([v, v, v, 255], i * 4));
  ctx.putImageData(img, 0, 0);
  return c;
}

async function predictOne(blob, modelId, adapterId) {
  const form = new FormData();
  form.append("file", blob, "digit.png");
  if (modelId) form.append("model_id", modelId);
  if (adapterId) form.append("adapter_id", adapterId);
  return (await request("/predict?include_image=true", { method: "POST", body: form })).json();
}

export async function render(main) {
  const errors = h("div");
  const models = await listAll(getJSON, "/models");
  const pad = h("canvas", { id: "pad", width: SIZE, height: SIZE, tabindex: 0,
    "aria-label": "Drawing pad: draw a digit with the mouse, a pen or a finger" });
  const ctx = pad.getContext("2d");
  const base = h("select", { id: "pg-base" }, models.map((m) => h("option", { value: m.id },
    `${m.id} (${m.kind}, digits ${m.classes.join("")})`)));
  const adapterBox = h("fieldset", { id: "pg-adapters" });
  const seen = h("div", { id: "pg-seen" });
  const answers = h("div", { className: "answers", id: "answers", "aria-live": "polite" });
  const timing = h("p", { className: "muted", id: "pg-timing" });
  const file = h("input", { id: "pg-file", type: "file", accept: "image/*" });
  const drop = h("div", { className: "drop" }, h("label", { for: "pg-file" }, "Or drop an image here, or choose a file"), file);
  let lastBlob = null;

  function clear() {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, SIZE, SIZE);
  }

  async function drawAdapters() {
    const wanted = base.value;
    const list = wanted ? await listAll(getJSON, `/adapters?base_model_id=${encodeURIComponent(wanted)}`) : [];
    if (base.value !== wanted) return; // another model was chosen meanwhile
    adapterBox.replaceChildren(h("legend", {}, "Adapters of this model"),
      ...(list.length ? list.map((a) => h("label", { className: "check" },
        h("input", { type: "checkbox", value: a.id, checked: true, onchange: () => lastBlob && predict(lastBlob, performance.now()) }),
        ` ${a.id} (r ${a.r}, digits ${a.classes.join("")}, ${pct(a.test_accuracy)})`)) : [h("p", { className: "muted" }, "None.")]));
  }

  /** Ask the base and every checked adapter at once; `t0`: when the stroke ended. */
  async function predict(blob, t0) {
    lastBlob = blob;
    showError(errors, null);
    const chosen = [...adapterBox.querySelectorAll("input:checked")].map((i) => i.value);
    const targets = [null, ...chosen];
    try {
      const results = await Promise.all(targets.map((a) => predictOne(blob, base.value, a)));
      seen.replaceChildren(h("p", {}, "The 28 × 28 image the model saw:"), imageCanvas(results[0].image));
      answers.replaceChildren(...results.map((r, i) => h("section", { className: "answer", "data-target": targets[i] || "base" },
        h("h3", {}, targets[i] ? `adapter ${targets[i]}` : `base ${r.model_id}`),
        h("p", {}, "Answer: ", h("span", { className: "digit-big" }, r.digit)),
        probabilityBars(r.probabilities, r.digit))));
      const ms = performance.now() - t0;
      pad.dataset.lastMs = ms.toFixed(1);
      timing.textContent = `${targets.length} answers ${ms.toFixed(0)} ms after the stroke ended.`;
    } catch (error) {
      showError(errors, error);
    }
  }

  // drawing: pointer events cover mouse, pen and touch
  let drawing = false;
  pad.addEventListener("pointerdown", (e) => {
    drawing = true;
    pad.setPointerCapture(e.pointerId);
    const r = pad.getBoundingClientRect();
    ctx.beginPath();
    ctx.moveTo(((e.clientX - r.left) * SIZE) / r.width, ((e.clientY - r.top) * SIZE) / r.height);
  });
  pad.addEventListener("pointermove", (e) => {
    if (!drawing) return;
    const r = pad.getBoundingClientRect();
    Object.assign(ctx, { strokeStyle: "#fff", lineWidth: STROKE, lineCap: "round", lineJoin: "round" });
    ctx.lineTo(((e.clientX - r.left) * SIZE) / r.width, ((e.clientY - r.top) * SIZE) / r.height);
    ctx.stroke();
  });
  const end = () => {
    if (!drawing) return;
    drawing = false;
    const t0 = performance.now();
    pad.toBlob((blob) => predict(blob, t0), "image/png");
  };
  pad.addEventListener("pointerup", end);
  pad.addEventListener("pointercancel", end);

  async function useFile(f) {
    if (!f) return;
    const t0 = performance.now();
    try {
      const bitmap = await createImageBitmap(f);
      clear();
      const s = Math.min(SIZE / bitmap.width, SIZE / bitmap.height);
      ctx.drawImage(bitmap, (SIZE - bitmap.width * s) / 2, (SIZE - bitmap.height * s) / 2, bitmap.width * s, bitmap.height * s);
    } catch {
      /* not drawable here: the service still gets the file and says what it makes of it */
    }
    predict(f, t0);
  }
  file.addEventListener("change", () => useFile(file.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    useFile(e.dataTransfer.files[0]);
  });
  base.addEventListener("change", () => drawAdapters().catch((err) => showError(errors, err)));

  clear();
  main.append(h("h1", {}, "Playground"), errors,
    models.length ? "" : h("p", { className: "notice" }, "No model yet: train one on the Jobs page first."),
    h("div", { className: "playground" },
      h("div", {}, pad, h("div", { className: "row" },
        h("button", { type: "button", className: "secondary", id: "pg-clear", onclick: () => { clear(); answers.replaceChildren(); seen.replaceChildren(); lastBlob = null; } }, "Clear")),
      drop),
      h("div", {}, h("label", { for: "pg-base" }, "Base model"), base, adapterBox, seen, timing)),
    h("h2", {}, "Answers"), answers);
  await drawAdapters();
}
