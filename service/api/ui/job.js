// One job: status and progress, live loss/accuracy (and forgetting) curves from the event
// stream, the event log, checkpoints, the result and its downloads.

import { download, followEvents, getJSON, sendJSON, TERMINAL } from "./api.js";
import { lineChart } from "./charts.js";
import { duration, h, pct, showError, statusCell, when } from "./dom.js";

function series(epochs, names) {
  return names
    .map((name) => ({ name, points: epochs.filter((e) => e[name] != null).map((e) => [e.epoch, e[name]]) }))
    .filter((s) => s.points.length);
}

export async function render(main, jobId) {
  const path = `/jobs/${encodeURIComponent(jobId)}`;
  const controller = new AbortController();
  const errors = h("div");
  const head = h("div");
  const charts = h("div", { className: "charts", id: "charts" });
  const log = h("ol", { className: "log", id: "event-log", "aria-label": "Event log" });
  const checkpoints = h("div");
  const result = h("div");
  const epochs = new Map(); // epoch -> metrics row
  let job = await getJSON(path);

  function drawHead() {
    const p = job.progress;
    const cancel = !TERMINAL.has(job.status) && !job.cancel_requested
      ? h("button", { className: "danger", type: "button", onclick: cancelJob }, "Cancel") : "";
    head.replaceChildren(
      h("p", {}, statusCell(job.status), ` · ${job.kind} · base ${job.base_model_id || "–"} · `,
        h("progress", { max: 1, value: p.fraction, "aria-label": "progress" }), ` epoch ${p.epoch}/${p.epochs}`,
        job.status === "running" ? ` · ETA ${duration(p.eta_seconds)}` : "", " ", cancel),
      h("p", { className: "muted" }, `created ${when(job.created_at)} · started ${when(job.started_at)} · finished ${when(job.finished_at)}`),
      job.error ? h("p", { className: "notice error" }, `${job.error.code}: ${job.error.message}`) : "");
  }

  function drawCharts() {
    const rows = [...epochs.values()].sort((a, b) => a.epoch - b.epoch);
    const figs = [
      lineChart("Loss per epoch", "epoch", "cross-entropy (nats)", series(rows, ["train_loss", "val_loss"])),
      lineChart("Validation accuracy per epoch", "epoch", "accuracy", series(rows, ["val_accuracy"])),
    ];
    if (rows.some((r) => r.base_val_accuracy != null)) {
      figs.push(lineChart("Forgetting: accuracy on the base's digits", "epoch", "accuracy",
        series(rows, ["base_val_accuracy"])));
    }
    charts.replaceChildren(...figs);
  }

  function logEvent(e) {
    log.append(h("li", { className: e.level },
      `#${e.id} ${new Date(e.created_at).toLocaleTimeString()} [${e.type}] ${e.message}`));
    log.scrollTop = log.scrollHeight;
  }

  async function drawCheckpoints() {
    const list = (await getJSON(`${path}/checkpoints`)).items;
    checkpoints.replaceChildren(list.length ? h("table", { id: "checkpoints" },
      h("thead", {}, h("tr", {}, ["Epoch", "val_loss", "val_accuracy", "Selected", "Published as"].map((t, i) =>
        h("th", { scope: "col", className: i === 1 || i === 2 ? "num" : "" }, t)))),
      h("tbody", {}, list.map((c) => h("tr", {},
        h("td", {}, c.epoch), h("td", { className: "num" }, c.metrics.val_loss?.toFixed(4) ?? "–"),
        h("td", { className: "num" }, pct(c.metrics.val_accuracy)), h("td", {}, c.selected ? "yes (result)" : ""),
        h("td", {}, c.published_id || "–"))))) : h("p", { className: "muted" }, "No checkpoints yet."));
  }

  function drawResult() {
    const r = job.result;
    const csv = h("button", { type: "button", className: "secondary",
      onclick: () => download(`${path}/metrics?format=csv`, `${jobId}-metrics.csv`).catch((e) => showError(errors, e)) },
      "Download metrics (CSV)");
    if (!r) return result.replaceChildren(h("p", { className: "muted" }, "No result yet."), csv);
    const parts = [h("p", { id: "job-result" }, `Test accuracy ${pct(r.test_accuracy)}, selected epoch ${r.selected_epoch ?? "–"}`,
      r.stopped_early ? ` (stopped early: ${r.stopped_early})` : "")];
    if (r.adapter_id) {
      parts.push(h("p", {}, "Adapter ", h("a", { href: "#/models" }, r.adapter_id), " ",
        h("button", { type: "button", onclick: () => download(`/adapters/${r.adapter_id}/archive`, `${r.adapter_id}.zip`).catch((e) => showError(errors, e)) },
          "Download adapter (PEFT zip)")));
    }
    if (r.model_id) parts.push(h("p", {}, "Model ", h("a", { href: "#/models" }, r.model_id)));
    result.replaceChildren(...parts, csv);
  }

  async function cancelJob() {
    try {
      job = await sendJSON("POST", `${path}/cancel`);
      drawHead();
    } catch (error) {
      showError(errors, error);
    }
  }

  async function onEvent(e) {
    logEvent(e);
    if (e.type === "metrics") {
      epochs.set(e.data.epoch, e.data);
      drawCharts();
    }
    if (e.type === "checkpoint") drawCheckpoints().catch((err) => showError(errors, err));
    if (e.type === "status" || e.type === "metrics") {
      job = await getJSON(path);
      drawHead();
      drawResult();
      // the selected epoch is known once the job has succeeded
      if (TERMINAL.has(job.status)) await drawCheckpoints();
    }
  }

  main.append(h("h1", {}, `Job ${jobId}`), errors, head, h("h2", {}, "Curves"), charts,
    h("h2", {}, "Result"), result, h("h2", {}, "Checkpoints"), checkpoints, h("h2", {}, "Event log"), log);
  for (const e of (await getJSON(`${path}/metrics`)).epochs) epochs.set(e.epoch, e);
  drawHead();
  drawCharts();
  drawResult();
  await drawCheckpoints();

  (async () => {
    // the log from the start, then live; the stream ends after the terminal status
    let after = 0;
    for (;;) {
      const page = await getJSON(`${path}/events?after=${after}&limit=1000`);
      for (const e of page.items) {
        logEvent(e);
        if (e.type === "metrics") epochs.set(e.data.epoch, e.data);
      }
      after = page.next_after ?? after;
      if (!page.has_more) break;
    }
    drawCharts();
    main.dataset.live = "following"; // the log is complete; the stream adds from here
    while (!controller.signal.aborted && !TERMINAL.has(job.status)) {
      await followEvents(jobId, after, (e) => {
        after = e.id;
        onEvent(e).catch((err) => showError(errors, err));
      }, controller.signal);
      job = await getJSON(path);
      drawHead();
      drawResult();
      if (!TERMINAL.has(job.status)) await new Promise((r) => setTimeout(r, 1000));
    }
  })().catch((error) => controller.signal.aborted || showError(errors, error));
  return () => controller.abort();
}
