"""The pre-stacked adapter bank (issue 16): the grouped product over a bank gives every row
of a mixed batch exactly its own adapter's update, in both layouts, in float32 and bf16."""

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


@pytest.mark.parametrize("layout", AdapterBank.LAYOUTS)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_banked_mixed_batch_equals_each_sample_alone(dtype, tol, layout) -> None:
    adapters = [_cast(a, dtype) for a in _adapters()]
    model = enable_multi_lora(MLP(MLPConfig(hidden1=64, hidden2=32)).eval()).to(dtype)
    bank = AdapterBank([*adapters, adapters[0]], layout=layout)  # a duplicate is kept once
    assert len(bank) == 4 and bank.holds(adapters) and bank.layout == layout
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


def test_the_layout_follows_the_dtype_unless_named() -> None:
    """float32 banks gather each row's own adapter (their cost follows the batch, not the
    bank); other dtypes keep the masked product measured on AMX; a bad name is refused."""
    adapters = _adapters()
    gathered = AdapterBank(adapters)
    assert gathered.layout == "gathered" and not gathered.masked
    # ranks 4, 8, 2, 3 on linear2's targets (0, 1, 3): one stack per rank, slots kept
    assert [s.members for s in gathered.stacks["linear2"]] == [(0,), (1,), (3,)]
    assert gathered.stacks["linear1"][0].a_t.shape == (1, 784, 4)  # (n, in, r)
    assert gathered.stacks["linear1"][0].b_t.shape == (1, 4, 64)  # (n, r, out), scaled
    torch.testing.assert_close(
        gathered.stacks["linear1"][0].b_t[0], adapters[0].B["linear1"].t() * adapters[0].scaling
    )
    masked = AdapterBank([_cast(a, torch.bfloat16) for a in adapters])
    assert masked.layout == "masked" and not masked.stacks
    assert masked.masked["linear2"].a_cat.shape == (4 + 8 + 3, 64)
    with pytest.raises(ValueError, match="layout"):
        AdapterBank(adapters, layout="dense")


def test_a_gathered_bank_costs_the_batch_not_the_bank() -> None:
    """A batch using one adapter of a large bank gathers only that adapter's matrices:
    its products see (rows, 1, r) operands whatever the bank holds."""
    adapters = _adapters()
    many = [*adapters, *(_cast(adapters[0], torch.float32) for _ in range(30))]
    bank = AdapterBank(many)
    seen: list[tuple[int, ...]] = []
    real_bmm = torch.bmm

    def spy(a, b, *rest, **kw):  # noqa: ANN001, ANN002, ANN003
        seen.append(tuple(b.shape))
        return real_bmm(a, b, *rest, **kw)

    model = enable_multi_lora(MLP(MLPConfig(hidden1=64, hidden2=32)).eval())
    x = torch.randn(3, 784)
    per = [adapters[3], adapters[3], None]
    with torch.inference_mode():
        torch.bmm = spy
        try:
            out = model(x, adapters=AdapterBatch(per, x.device, bank))
        finally:
            torch.bmm = real_bmm
        alone = torch.cat(
            [model(x[i : i + 1], adapters=AdapterBatch([a], x.device)) for i, a in enumerate(per)]
        )
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-5)
    assert seen == [(2, 784, 3), (2, 3, 64), (2, 64, 3), (2, 3, 32), (2, 32, 3), (2, 3, 5)]
