"""Accuracy benchmark for bf16 (issue 16): bf16 vs fp32 over the same seeds, real MNIST.

For each seed (default 0, 1, 2) and each precision it pre-trains the MLP on digits 0-4
(service defaults: lr 1e-3, weight decay 1e-4, dropout 0.5, cosine schedule, batch 128)
and then fine-tunes a LoRA r=8 adapter (alpha 16, lr 1e-3, no weight decay, no dropout,
cosine) on digits 5-9 from that precision's own base, through ``models.training.train``.
The seed sets the initialisation, shuffling and dropout; the train/validation split is
seed 0 throughout, so the precisions see the same data.

It prints each run's test accuracy, then per stage the mean and sample standard deviation
over the seeds of each precision, the difference of the means, and the target: the means
differ by less than the seeds' own spread (the larger of the two standard deviations).
Where bf16 is not fast (:func:`models.precision.bf16_fast`) it says so and still runs it
(the numbers are the same, only slower), unless ``--require-fast``.

Usage: python benchmarks/bench_precision.py [--seeds 0 1 2] [--pretrain-epochs 3]
                                            [--finetune-epochs 3] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from models.classifier import MLP, MLPConfig  # noqa: E402
from models.data import load_digit_splits  # noqa: E402
from models.lora import LoraConfig, inject_lora  # noqa: E402
from models.precision import bf16_fast, bf16_support  # noqa: E402
from models.training import TrainConfig, train  # noqa: E402

PRECISIONS = ("fp32", "bf16")
STAGES = ("pretrain", "lora_r8")


def run_seed(seed: int, precision: str, args, base_splits, ft_splits) -> dict[str, float]:
    """Test accuracy of the pre-training and the LoRA r=8 fine-tune of one seed."""
    torch.manual_seed(seed)
    base = MLP(MLPConfig(n_classes=5, dropout=0.5))
    pre_cfg = TrainConfig(
        epochs=args.pretrain_epochs, seed=seed, lr_schedule="cosine", precision=precision
    )
    pre = train(base, base_splits, pre_cfg, device="cpu")
    lora = inject_lora(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16.0))
    lora.set_dropout(0.0)
    ft_cfg = TrainConfig(
        epochs=args.finetune_epochs,
        seed=seed,
        weight_decay=0.0,
        lr_schedule="cosine",
        precision=precision,
    )
    ft = train(lora, ft_splits, ft_cfg, device="cpu")
    assert pre.precision == ft.precision == precision
    return {"pretrain": pre.test_accuracy, "lora_r8": ft.test_accuracy}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = os.environ.get("DATA_DIR") or str(REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--data-dir", default=default_data)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--require-fast", action="store_true", help="exit 2 without bf16 hw")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fast = bf16_fast("cpu")
    print(
        f"torch={torch.__version__} threads={torch.get_num_threads()} "
        f"load_avg_1m={os.getloadavg()[0]:.2f} bf16: {bf16_support('cpu')}"
    )
    if not fast:
        print("bf16 is not fast here: it runs emulated (same numbers, slower)")
        if args.require_fast:
            return 2
    base_splits = load_digit_splits(args.data_dir, (0, 1, 2, 3, 4), seed=0)
    ft_splits = load_digit_splits(args.data_dir, (5, 6, 7, 8, 9), seed=0)
    acc: dict[str, dict[str, list[float]]] = {p: {s: [] for s in STAGES} for p in PRECISIONS}
    for seed in args.seeds:
        for precision in PRECISIONS:
            t0 = time.perf_counter()
            got = run_seed(seed, precision, args, base_splits, ft_splits)
            for stage in STAGES:
                acc[precision][stage].append(got[stage])
            print(
                f"seed {seed} {precision}: pretrain {got['pretrain']:.4f}  "
                f"lora_r8 {got['lora_r8']:.4f}  ({time.perf_counter() - t0:.0f} s)"
            )
    ok = True
    print(
        f"\ntest accuracy over seeds {args.seeds} (pretrain {args.pretrain_epochs} epochs, "
        f"LoRA {args.finetune_epochs} epochs):"
    )
    for stage in STAGES:
        means = {p: statistics.fmean(acc[p][stage]) for p in PRECISIONS}
        spreads = {p: statistics.stdev(acc[p][stage]) for p in PRECISIONS}
        diff = means["bf16"] - means["fp32"]
        spread = max(spreads.values())
        passed = abs(diff) < spread
        ok &= passed
        print(
            f"  {stage:<8} fp32 {means['fp32']:.4f} +- {spreads['fp32']:.4f}  "
            f"bf16 {means['bf16']:.4f} +- {spreads['bf16']:.4f}  "
            f"|mean diff| {abs(diff):.4f} vs spread {spread:.4f} "
            f"[{'PASS' if passed else 'FAIL'} diff < spread]"
        )
    print(f"overall: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
