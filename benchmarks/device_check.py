"""The GPU check: training and batched LoRA serving on ``cuda`` (fp32 and bf16), with figures.

Needs only ``models/`` and PyTorch (no FastAPI, Celery, SQLAlchemy, database or broker), so
it runs on a bare GPU machine with the checkout. On a host without CUDA every CUDA part
prints ``SKIP cuda: ...`` and the CPU figures are still printed (``--smoke`` makes the run
short: the suite runs it so, tests/models/test_device_check.py).

Parts:
1. agreement: a LoRA-injected MLP's logits on cuda vs cpu (fp32: max |diff| <= 1e-4;
   bf16: <= 0.1, bf16 keeps 8 bits of mantissa), and one training epoch on each device
   from the same seed (final train loss within 5 % of each other);
2. training speed: ``models.training.train_steps`` steps/s (pre-training and LoRA r=8);
3. batched LoRA forward (``models.multi_lora.forward_with_adapters``, 8 adapters mixed in
   one batch): samples/s in fp32 and bf16, and bf16's max |diff| to fp32.

MNIST: ``--data-dir`` holding ``MNIST/raw`` with the four idx files, plain or ``.gz``
(decompressed into a temporary directory); without them synthetic data of the same shape.

Usage: python benchmarks/device_check.py [--smoke] [--data-dir DIR]
Exit status: 0 when every check that ran passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from models.classifier import MLP, MLPConfig  # noqa: E402
from models.data import DigitSplits, load_digit_splits  # noqa: E402
from models.lora import AdapterWeights, LoraConfig, inject_lora  # noqa: E402
from models.multi_lora import forward_with_adapters  # noqa: E402
from models.training import TrainConfig, make_optimizer, train_steps  # noqa: E402

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SERVICE_LIBRARIES = ("fastapi", "celery", "sqlalchemy")
FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    """Print PASS/FAIL for ``what``; remember failures for the exit status."""
    print(f"{'PASS' if ok else 'FAIL'} {what}")
    if not ok:
        FAILURES.append(what)


def load_data(data_dir: Path | None, n_train: int) -> tuple[DigitSplits, str]:
    """Digits 0-4 from the idx files (plain, or .gz decompressed), else synthetic."""
    raw = data_dir / "MNIST" / "raw" if data_dir else None
    if raw and all((raw / f).exists() for f in MNIST_FILES):
        return _cut(load_digit_splits(data_dir, seed=0), n_train), f"MNIST from {raw}"
    if raw and all((raw / f"{f}.gz").exists() for f in MNIST_FILES):
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "MNIST" / "raw"
            target.mkdir(parents=True)
            for name in MNIST_FILES:
                with gzip.open(raw / f"{name}.gz", "rb") as src, (target / name).open("wb") as dst:
                    shutil.copyfileobj(src, dst)
            return _cut(load_digit_splits(tmp, seed=0), n_train), f"MNIST from {raw}/*.gz"
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + 512, 784, generator=gen)
    y = torch.randint(0, 5, (n_train + 512,), generator=gen)
    split = DigitSplits(
        train_x=x[:n_train], train_y=y[:n_train], val_x=x[n_train:], val_y=y[n_train:],
        test_x=x[n_train:], test_y=y[n_train:], classes=(0, 1, 2, 3, 4),
    )  # fmt: skip
    return split, "synthetic data (no MNIST idx files found)"


def _cut(splits: DigitSplits, n: int) -> DigitSplits:
    splits.train_x, splits.train_y = splits.train_x[:n], splits.train_y[:n]
    return splits


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lora_model(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    model = MLP(MLPConfig(n_classes=5, dropout=0.0))
    return inject_lora(model, LoraConfig(r=8, lora_alpha=16))


def random_adapter(seed: int) -> AdapterWeights:
    """An adapter with nonzero B (a fresh one's B is zero: no effect to measure)."""
    injected = lora_model(0)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in injected.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return AdapterWeights.from_model(injected)


def train_speed(kind: str, device: torch.device, splits: DigitSplits, steps: int) -> float:
    """Steps per second of ``train_steps`` (batch 128) for ``kind`` on ``device``."""
    torch.manual_seed(0)
    model = MLP(MLPConfig(n_classes=5)) if kind == "pretrain" else lora_model()
    model.to(device)
    config = TrainConfig(batch_size=128, lr_schedule="constant")
    optimizer = make_optimizer(model, config)
    x, y = splits.train_x[: steps * 128].to(device), splits.train_y[: steps * 128].to(device)
    gen = torch.Generator().manual_seed(0)
    for _ in train_steps(model, optimizer, x[:256], y[:256], 128, gen):  # warm-up
        pass
    sync(device)
    start = time.perf_counter()
    n = sum(1 for _ in train_steps(model, optimizer, x, y, 128, gen))
    sync(device)
    return n / (time.perf_counter() - start)


def batched_forward(device: torch.device, dtype: torch.dtype, batch: int, rounds: int):
    """(samples/s, logits) of a mixed batch over 8 adapters on ``device`` in ``dtype``."""
    torch.manual_seed(0)
    base = MLP(MLPConfig(n_classes=5, dropout=0.0)).eval()
    adapters = [random_adapter(s) for s in range(8)]
    model = base.to(device=device, dtype=dtype)
    per_sample = [adapters[i % 8] if i % 9 else None for i in range(batch)]
    x = torch.randn(batch, 784, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    logits = forward_with_adapters(model, x, per_sample)  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(rounds):
        logits = forward_with_adapters(model, x, per_sample)
    sync(device)
    return batch * rounds / (time.perf_counter() - start), logits.float().cpu()


def agreement(cuda: torch.device, splits: DigitSplits) -> None:
    """Logits and one epoch of training agree between cpu and cuda."""
    adapter = random_adapter(3)
    x = splits.val_x[:512]
    torch.manual_seed(0)
    base = MLP(MLPConfig(n_classes=5, dropout=0.0)).eval()
    ref = forward_with_adapters(base, x, [adapter] * 512)
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 0.1)):
        on_gpu = copy.deepcopy(base).to(device=cuda, dtype=dtype)
        got = forward_with_adapters(on_gpu, x.to(cuda, dtype), [adapter] * 512).float().cpu()
        diff = (got - ref).abs().max().item()
        label = str(dtype).removeprefix("torch.")
        check(diff <= tol, f"cuda {label} LoRA logits vs cpu fp32: max|diff| {diff:.2e} <= {tol:g}")
    losses = {}
    for device in (torch.device("cpu"), cuda):
        torch.manual_seed(0)
        net = lora_model().to(device)
        opt = make_optimizer(net, TrainConfig(batch_size=128, lr_schedule="constant"))
        gen = torch.Generator().manual_seed(0)
        x_train, y_train = splits.train_x.to(device), splits.train_y.to(device)
        *_, (total, seen) = train_steps(net, opt, x_train, y_train, 128, gen)
        losses[device.type] = float(total) / seen
    rel = abs(losses["cuda"] - losses["cpu"]) / max(abs(losses["cpu"]), 1e-8)
    check(
        rel <= 0.05, f"one LoRA epoch, mean loss cpu {losses['cpu']:.4f} cuda {losses['cuda']:.4f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes (seconds on a CPU)")
    default_data = os.environ.get("DATA_DIR") or str(REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--data-dir", default=default_data, help="directory holding MNIST/raw")
    args = parser.parse_args()
    n_train, steps, rounds = (2048, 8, 3) if args.smoke else (21_417, 160, 50)
    batches = (256,) if args.smoke else (256, 4096)
    has_cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if has_cuda else "none"
    print(
        f"torch {torch.__version__}  cuda available: {has_cuda}  gpu: {name}  smoke: {args.smoke}"
    )
    splits, source = load_data(Path(args.data_dir) if args.data_dir else None, n_train)
    print(f"data: {source}, {splits.train_x.shape[0]} train samples")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if has_cuda else [])
    if not has_cuda:
        print("SKIP cuda: no CUDA device (torch.cuda.is_available() is False); CPU figures only")
    else:
        agreement(torch.device("cuda"), splits)

    print("training speed, steps/s of batch 128:")
    for device in devices:
        for kind in ("pretrain", "lora_r8"):
            print(f"  {device.type:<5} {kind:<9} {train_speed(kind, device, splits, steps):10.1f}")
    print("batched LoRA forward (8 adapters + base in one batch), samples/s:")
    for device in devices:
        for batch in batches:
            fp32, ref = batched_forward(device, torch.float32, batch, rounds)
            line = f"  {device.type:<5} batch {batch:<5} fp32 {fp32:12.0f}"
            if device.type == "cuda" or args.smoke:
                bf16, got = batched_forward(device, torch.bfloat16, batch, rounds)
                diff = (got - ref).abs().max().item()
                line += f"  bf16 {bf16:12.0f}  bf16 max|diff| {diff:.3f}"
                check(
                    diff <= 0.1,
                    f"{device.type} bf16 batched logits within 0.1 of fp32 ({diff:.3f})",
                )
            print(line)
    loaded = [m for m in SERVICE_LIBRARIES if m in sys.modules]
    check(not loaded, f"no service library imported (found: {loaded or 'none'})")
    print(f"device check: {'FAILED ' + str(len(FAILURES)) if FAILURES else 'ok'}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    raise SystemExit(main())
