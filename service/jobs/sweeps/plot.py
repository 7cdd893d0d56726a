"""``GET /sweeps/{id}/plot.png`` / ``.svg``: test accuracy against trainable parameters.

Log x; each fine-tune variant at its mean with its 95 % interval as an error bar (LoRA
variants joined by rank), each ``pretrain`` variant (the ceiling) as a horizontal line with
its interval as a band, and the seed notebook's published figures as reference marks at
the trainable parameters those settings have on this sweep's base.
"""

from __future__ import annotations

import io
from typing import Any

SEED_NOTEBOOK_LORA = {4: 0.958, 8: 0.973, 64: 0.987}
"""The seed notebook's LoRA test accuracies on 5-9 by rank (one run each)."""
SEED_NOTEBOOK_FULL = 0.938
"""The seed notebook's full fine-tuning test accuracy on 5-9 (lr 1e-5, one run)."""
FORMATS = {"png": "image/png", "svg": "image/svg+xml"}


def _lora_parameters_per_rank(summary: dict[str, Any]) -> float | None:
    for v in summary["variants"]:
        r = v["config"].get("r")
        if v["kind"] == "finetune_lora" and r and v["trainable_parameters"]:
            return v["trainable_parameters"] / r
    return None


def _errors(stats: dict[str, Any]) -> tuple[float, float]:
    if stats["ci_low"] is None:
        return 0.0, 0.0
    return stats["mean"] - stats["ci_low"], stats["ci_high"] - stats["mean"]


def render_plot(summary: dict[str, Any], fmt: str = "png") -> bytes:
    """The figure of a sweep summary (:func:`service.jobs.sweeps.summary.sweep_summary`)
    as PNG or SVG bytes.

    Raises:
        ValueError: ``fmt`` not ``png`` or ``svg``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    from matplotlib.figure import Figure  # no pyplot: its global state is not thread-safe

    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    done = [v for v in summary["variants"] if v["test_accuracy"]["mean"] is not None]
    lora = sorted(
        (v for v in done if v["kind"] == "finetune_lora"),
        key=lambda v: v["config"].get("r") or 0,
    )
    groups: dict[tuple, list[dict]] = {}
    for v in lora:  # one line per LoRA setting other than r (e.g. per learning rate)
        key = tuple(sorted((k, str(x)) for k, x in v["config"].items() if k not in ("r",
                    "lora_alpha")))  # fmt: skip
        groups.setdefault(key, []).append(v)
    for members in groups.values():
        xs = [v["trainable_parameters"] for v in members]
        ys = [v["test_accuracy"]["mean"] for v in members]
        errs = list(zip(*(_errors(v["test_accuracy"]) for v in members), strict=True))
        label = "LoRA" if len(groups) == 1 else f"LoRA lr {members[0]['config'].get('lr'):g}"
        ax.errorbar(xs, ys, yerr=errs, fmt="o-", capsize=3, label=label)
        for v in members:
            ax.annotate(f"r={v['config'].get('r')}", (v["trainable_parameters"],
                        v["test_accuracy"]["mean"]), textcoords="offset points",
                        xytext=(5, -12), fontsize=8)  # fmt: skip
    for v in done:
        if v["kind"] == "finetune_full":
            lo, hi = _errors(v["test_accuracy"])
            ax.errorbar([v["trainable_parameters"]], [v["test_accuracy"]["mean"]],
                        yerr=[[lo], [hi]], fmt="s", capsize=3,
                        label=f"full fine-tune, lr {v['config'].get('lr'):g}")  # fmt: skip
        elif v["kind"] == "pretrain":
            stats = v["test_accuracy"]
            line = ax.axhline(stats["mean"], linestyle="--", color="gray",
                              label=f"ceiling: {v['name']} (from random weights)")  # fmt: skip
            if stats["ci_low"] is not None:
                ax.axhspan(stats["ci_low"], stats["ci_high"], color=line.get_color(), alpha=0.15)
    per_rank = _lora_parameters_per_rank(summary)
    if per_rank:
        ranks = sorted(SEED_NOTEBOOK_LORA)
        ax.plot([per_rank * r for r in ranks], [SEED_NOTEBOOK_LORA[r] for r in ranks], "x",
                color="black", markersize=8, label="seed notebook, LoRA r=4/8/64")  # fmt: skip
    if summary.get("base_parameters"):
        ax.plot([summary["base_parameters"]], [SEED_NOTEBOOK_FULL], "+", color="black",
                markersize=10, label="seed notebook, full fine-tune")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("test accuracy on the new digits (mean, 95 % CI)")
    ax.set_title("Sweep " + summary["id"] + ": accuracy vs trainable parameters", fontsize=10)
    fig.text(0.01, 0.01, summary["interval_note"], fontsize=7, wrap=True)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower center", fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out = io.BytesIO()
    fig.savefig(out, format=fmt, dpi=120)
    return out.getvalue()
