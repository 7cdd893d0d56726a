"""The pre-stacked adapter bank (issue 16): the grouped product over a bank gives every row
of a mixed batch exactly its own adapter's update, in float32 and bf16."""

from __future__ import annotations

import pytest
import torch

from models.classifier import MLP, MLPConfig
from models.lora import AdapterWeights, LoraConfig
from models.multi_lora import AdapterBank, AdapterBatch, enable_multi_lora

SHAPES = {"linear1": (784, 64), "linear2": (64, 32), "linear3": (32, 5)}


def _adapters() -> list[AdapterWeights]:
    """Different ranks, targets and scalings."""
    torch.manual_seed(0)
    out = []
    for r, targets in (
        (4, ("linear1", "linear2", "linear3")),
        (8, ("linear2",)),
        (2, ("linear3", "linear1")),
        (3, ("linear1", "linear2", "linear3")),
    ):
        lora = LoraConfig(r=r, lora_alpha=3.0 * r + 1, target_modules=targets)
        A = {m: torch.randn(r, SHAPES[m][0]) / SHAPES[m][0] ** 0.5 for m in targets}
        B = {m: torch.randn(SHAPES[m][1], r) * 0.3 for m in targets}
        out.append(AdapterWeights(lora, A, B))
    return out


def _cast(a: AdapterWeights, dtype: torch.dtype) -> AdapterWeights:
    return AdapterWeights(
        a.config, {k: v.to(dtype) for k, v in a.A.items()}, {k: v.to(dtype) for k, v in a.B.items()}
    )


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_banked_mixed_batch_equals_each_sample_alone(dtype, tol) -> None:
    adapters = [_cast(a, dtype) for a in _adapters()]
    model = enable_multi_lora(MLP(MLPConfig(hidden1=64, hidden2=32)).eval()).to(dtype)
    bank = AdapterBank([*adapters, adapters[0]])  # a duplicate is kept once
    assert len(bank) == 4 and bank.holds(adapters)
    # adapters[3] is in the bank but not in the batch: its columns must add nothing
    per = [adapters[0], None, adapters[1], adapters[2], adapters[0], None, adapters[2]]
    x = torch.randn(len(per), 784).to(dtype)
    with torch.inference_mode():
        batch = AdapterBatch(per, x.device, bank)
        assert batch.bank is bank
        banked = model(x, adapters=batch).float()
        unbanked = model(x, adapters=AdapterBatch(per, x.device)).float()
        alone = torch.cat(
            [
                model(x[i : i + 1], adapters=AdapterBatch([a], x.device)).float()
                for i, a in enumerate(per)
            ]
        )
        base = model(x).float()
    torch.testing.assert_close(banked, alone, atol=tol, rtol=tol)
    torch.testing.assert_close(banked, unbanked, atol=tol, rtol=tol)
    torch.testing.assert_close(banked[[1, 5]], base[[1, 5]], atol=tol, rtol=tol)  # no adapter
    assert not torch.allclose(banked[0], base[0], atol=1e-2)  # the adapters do change answers


def test_a_bank_missing_an_adapter_is_not_used() -> None:
    """An adapter reloaded under the same id is a new object: a bank built before it does
    not hold it, so the batch stacks its own (and the answers stay right)."""
    adapters = _adapters()
    bank = AdapterBank(adapters[:2])
    reloaded = _cast(adapters[1], torch.float32)  # equal values, another object
    assert not bank.holds([reloaded]) and not bank.holds([adapters[2]])
    model = enable_multi_lora(MLP(MLPConfig(hidden1=64, hidden2=32)).eval())
    per = [reloaded, adapters[2]]
    x = torch.randn(2, 784)
    with torch.inference_mode():
        batch = AdapterBatch(per, x.device, bank)
        assert batch.bank is None
        out = model(x, adapters=batch)
        alone = torch.cat(
            [model(x[i : i + 1], adapters=AdapterBatch([a], x.device)) for i, a in enumerate(per)]
        )
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-5)
