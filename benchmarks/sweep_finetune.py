"""Fine-tuning defaults sweep: test accuracy on 5-9 of variants from one pre-trained base.

The figures behind the service's fine-tuning defaults (README, "The comparison"): the same
base, 10 epochs, seed 0, one run per variant, through ``models.training.train`` directly.

Each variant is ``kind:key=value:...`` with kind ``lora`` or ``full`` and keys ``r``,
``alpha`` (default 2 r), ``lr``, ``schedule`` (constant | cosine), ``dropout``,
``wd`` (weight decay). The base is pre-trained once (service defaults: 30 epochs, lr 1e-3,
weight decay 1e-4, dropout 0.5, cosine) and cached in ``--base-dir``.

Usage: python benchmarks/sweep_finetune.py [--data-dir DIR] [--base-dir DIR] VARIANT ...
  e.g. lora:r=64:schedule=constant:dropout=0.5 lora:r=64:dropout=0.5 lora:r=64 full:lr=1e-4
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import torch

from models.checkpoint import load_model, save_model
from models.classifier import MLP, MLPConfig
from models.data import load_digit_splits
from models.lora import LoraConfig, inject_lora
from models.training import TrainConfig, train

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = {
    "lora": {"lr": 1e-3, "wd": 0.0, "schedule": "cosine", "dropout": 0.0, "r": 8},
    "full": {"lr": 1e-5, "wd": 1e-4, "schedule": "cosine", "dropout": 0.0},
}


def parse(spec: str) -> tuple[str, dict[str, float | str]]:
    """``"lora:r=64:lr=1e-3"`` -> ``("lora", {...defaults, r: 64, lr: 0.001})``."""
    kind, *pairs = spec.split(":")
    if kind not in DEFAULTS:
        raise SystemExit(f"unknown kind {kind!r} in {spec!r}")
    values: dict[str, float | str] = dict(DEFAULTS[kind])
    for pair in pairs:
        key, _, value = pair.partition("=")
        values[key] = value if key == "schedule" else float(value)
    return kind, values


def base_model(data_dir: str, base_dir: Path) -> MLP:
    """The cached pre-trained base, trained (about 2 min on 2 cores) if absent."""
    if (base_dir / "model.safetensors").exists():
        return load_model(base_dir)[0]
    splits = load_digit_splits(data_dir, classes=(0, 1, 2, 3, 4), seed=0)
    torch.manual_seed(0)
    model = MLP(MLPConfig())
    result = train(model, splits, TrainConfig(epochs=30, lr_schedule="cosine"))
    print(f"pre-trained base: test accuracy on 0-4 {result.test_accuracy:.4f}", flush=True)
    save_model(base_dir, model, classes=(0, 1, 2, 3, 4))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = os.environ.get("DATA_DIR") or str(REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--data-dir", default=default_data)
    parser.add_argument("--base-dir", type=Path, default=REPO_ROOT / "var" / "sweep-base")
    parser.add_argument("variants", nargs="+")
    args = parser.parse_args()
    base = base_model(args.data_dir, args.base_dir)
    splits = load_digit_splits(args.data_dir, classes=(5, 6, 7, 8, 9), seed=0)
    for spec in args.variants:
        kind, v = parse(spec)
        model = copy.deepcopy(base)
        model.set_dropout(float(v["dropout"]))
        torch.manual_seed(0)
        if kind == "lora":
            r = int(v["r"])
            inject_lora(model, LoraConfig(r=r, lora_alpha=float(v.get("alpha", 2 * r))))
        config = TrainConfig(
            epochs=10, lr=float(v["lr"]), weight_decay=float(v["wd"]),
            lr_schedule=str(v["schedule"]),
        )  # fmt: skip
        started = time.perf_counter()
        result = train(model, splits, config)
        print(
            f"{spec:<45} test acc 5-9 {result.test_accuracy:.4f}  "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
