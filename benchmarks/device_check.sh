#!/usr/bin/env bash
# The prepared GPU check (issue 15): on a machine with an NVIDIA GPU, run the CUDA-marked
# tests of models/, the training benchmark and the batched LoRA forward on cuda (fp32 and
# bf16), printing their figures; well under 10 minutes. Needs only models/ and PyTorch,
# torchvision, safetensors and peft (no FastAPI, Celery, SQLAlchemy, database or broker).
#
#   bash benchmarks/device_check.sh [--smoke] [--data-dir DIR]   # DIR holds MNIST/raw
#
# MNIST: the four idx files under DIR/MNIST/raw, plain or .gz (about 11 MB gzipped);
# without them the checks use synthetic data. On a host without CUDA the CUDA parts print
# "SKIP cuda: ..." and the CPU figures are printed; --smoke keeps the run to seconds
# (tests/models/test_device_check.py runs it so).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
SMOKE=0
for arg in "$@"; do [[ "$arg" == "--smoke" ]] && SMOKE=1; done
status=0

echo "== 1/3 models/ tests marked cuda"
if "$PYTHON" -c "import pytest" 2>/dev/null; then
  # -p no:cacheprovider: the checkout may be read-only; the root conftest imports nothing
  # of the service at collection time.
  "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests/models -rs || status=1
else
  echo "SKIP cuda tests: pytest is not installed here"
fi

echo "== 2/3 device check (agreement, training speed, batched LoRA forward fp32/bf16)"
"$PYTHON" benchmarks/device_check.py "$@" || status=1

echo "== 3/3 training benchmark (bench_training.py, on the device pick_device() picks)"
if [[ "$SMOKE" == 1 ]]; then
  echo "SKIP training benchmark: --smoke"
elif ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "SKIP cuda training benchmark: no CUDA device (run benchmarks/bench_training.py for CPU)"
else
  DATA_ARGS=()
  prev=""
  for arg in "$@"; do [[ "$prev" == "--data-dir" ]] && DATA_ARGS=(--data-dir "$arg"); prev="$arg"; done
  timeout 420 "$PYTHON" benchmarks/bench_training.py --epochs 1 "${DATA_ARGS[@]}" || status=1
fi
echo "device_check.sh: exit $status"
exit $status
