"""The forward pass of a mixed-adapter micro-batch, in process (issue 16, target (c) >= 0.9 (b)).

The served network (784-1000-2000-5, ``enable_multi_lora``) runs a batch of 16 samples,
each with one of 16 adapters (r = 8, all three layers, drawn at random per sample and per
batch), through ``MLP.forward(x, adapters=AdapterBatch(...))``, in each of the ways
:class:`models.multi_lora.AdapterBatch` can add the adapters' updates:

* base alone (no adapters): the floor;
* per adapter (no bank): a product per distinct adapter;
* masked bank: one grouped product over all 16 adapters, a row mask per batch;
* gathered bank: each row's own A and B gathered, two batched products of one row each.

Rounds are interleaved (every form sees the same drift of a shared machine); the figure is
the median over rounds of the mean time per pass, and "extra" is that minus the base's.
bf16 runs too where this machine has fast bf16 (:func:`models.precision.bf16_fast`); where
it has not, the benchmark says so and measures float32 only.

Usage: python benchmarks/bench_multi_lora.py [--batch 16] [--adapters 16] [--rounds 9]
                                             [--passes 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from models.classifier import MLP  # noqa: E402
from models.lora import AdapterWeights, LoraConfig  # noqa: E402
from models.multi_lora import AdapterBank, AdapterBatch, enable_multi_lora  # noqa: E402
from models.precision import bf16_fast, bf16_support  # noqa: E402

SHAPES = {"linear1": (784, 1000), "linear2": (1000, 2000), "linear3": (2000, 5)}


def adapters(n: int, dtype: torch.dtype) -> list[AdapterWeights]:
    """``n`` random r = 8 adapters on all three layers, in ``dtype``."""
    lora = LoraConfig(r=8, lora_alpha=16.0, target_modules=tuple(SHAPES))
    return [
        AdapterWeights(
            lora,
            {m: (torch.randn(8, i) / i**0.5).to(dtype) for m, (i, _) in SHAPES.items()},
            {m: (torch.randn(o, 8) * 0.05).to(dtype) for m, (_, o) in SHAPES.items()},
        )
        for _ in range(n)
    ]


def forms(
    dtype: torch.dtype, args: argparse.Namespace
) -> tuple[dict[str, Callable[[], object]], Callable[[str, str], float]]:
    """The passes to time in ``dtype`` and a function giving the largest logit difference of
    two forms over one mixed batch (they must agree)."""
    model = enable_multi_lora(MLP().eval()).to(dtype)
    pool = adapters(args.adapters, dtype)
    banks = {layout: AdapterBank(pool, layout=layout) for layout in AdapterBank.LAYOUTS}
    xs = [torch.rand(args.batch, 784).to(dtype) for _ in range(8)]
    draws = [[random.choice(pool) for _ in range(args.batch)] for _ in range(64)]
    k = 0

    def pass_(bank_layout: str | None, mixed: bool = True, j: int | None = None) -> torch.Tensor:
        nonlocal k
        k = (k + 1) % len(draws) if j is None else j
        x = xs[k % len(xs)]
        with torch.inference_mode():
            if not mixed:
                return model(x)
            bank = banks[bank_layout] if bank_layout else None
            return model(x, adapters=AdapterBatch(draws[k], x.device, bank))

    run = {
        "base alone": lambda: pass_(None, mixed=False),
        "per adapter (no bank)": lambda: pass_(None),
        "masked bank": lambda: pass_("masked"),
        "gathered bank": lambda: pass_("gathered"),
    }
    layouts = {"per adapter (no bank)": None, "masked bank": "masked", "gathered bank": "gathered"}

    def differ(a: str, b: str) -> float:
        return (pass_(layouts[a], j=0).float() - pass_(layouts[b], j=0).float()).abs().max().item()

    return run, differ


def measure(run: dict[str, Callable[[], object]], args: argparse.Namespace) -> dict[str, float]:
    """Median over interleaved rounds of the mean ms per pass of each form."""
    for f in run.values():
        for _ in range(args.passes // 4):
            f()
    times: dict[str, list[float]] = {name: [] for name in run}
    for _ in range(args.rounds):
        for name, f in run.items():
            start = time.perf_counter()
            for _ in range(args.passes):
                f()
            times[name].append((time.perf_counter() - start) / args.passes * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="samples per pass")
    parser.add_argument("--adapters", type=int, default=16, help="distinct adapters drawn from")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds")
    parser.add_argument("--passes", type=int, default=200, help="passes per form and round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (serving: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(0)
    torch.manual_seed(0)
    dtypes = [torch.float32]
    if bf16_fast("cpu"):
        dtypes.append(torch.bfloat16)
    else:
        print(f"bf16: not measured ({bf16_support('cpu')})")
    print(
        f"batch {args.batch}, {args.adapters} adapters r=8 on all layers, {args.threads} thread(s),"
        f" median of {args.rounds} rounds x {args.passes} passes"
    )
    for dtype in dtypes:
        run, differ = forms(dtype, args)
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        for other in ("masked bank", "gathered bank"):
            gap = differ("per adapter (no bank)", other)
            if gap > tol:
                print(f"{other} differs from the per-adapter form by {gap:.2e} (> {tol})")
                return 1
        ms = measure(run, args)
        base = ms["base alone"]
        print(
            f"\n{str(dtype).removeprefix('torch.'):9s} {'form':24s} {'ms/pass':>8s} {'extra':>7s}"
        )
        for name, value in ms.items():
            extra = "" if name == "base alone" else f"{value - base:+7.3f}"
            print(f"{'':9s} {name:24s} {value:8.3f} {extra}")
        chosen = AdapterBank([], dtype=dtype).layout
        print(f"{'':9s} (the executor's bank in {dtype}: {chosen})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
