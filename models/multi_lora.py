"""Many LoRA adapters in one batch: each sample its own adapter (or none), base weights shared.

A serving layer, :class:`MultiLoraLinear`, wraps a pretrained ``nn.Linear`` as
``base_layer`` and takes the batch's adapters at call time, the way peft's LoRA layers take
``adapter_names=`` for mixed batches: for the rows of each adapter it adds
``scaling * B (A x)`` (Hu et al. 2021, eq. 3) to the base output, never touching the base
weights. ``MLP.forward(x, adapters=...)`` hands an :class:`AdapterBatch` to each of its
linear layers, so the network's layer order is written once, in ``MLP.forward``: serving,
evaluation and training all run through it.

* :func:`enable_multi_lora` wraps a served network's linears in place (the serving cache
  owns that network); :func:`forward_with_adapters` does the same on a temporary view that
  shares the parameters of a plain MLP, for callers holding a network others use too.
* A sample's answer does not depend on its batch neighbours: every form of
  :class:`AdapterBatch` gives each row only its own adapter's update (gathered: the row's
  own matrices; masked: the other adapters' columns multiplied by 0), so a mixed batch
  equals each sample alone to float32 rounding.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.classifier import LINEAR_NAMES, MLP
from models.lora import AdapterWeights, lora_layers


class AdapterBatch:
    """Which adapter each sample of a batch uses, grouped for :class:`MultiLoraLinear`.

    Three ways to add ``scaling_i * B_i (A_i x_j)`` (Hu et al. 2021, eq. 3) to each row j of
    adapter i, chosen by whether a bank holds the batch's adapters and by its layout:

    * **per adapter** (no bank; float32): for each distinct adapter, gather its rows,
      ``B (A x)``, scatter-add. Two small matmuls per adapter and layer.
    * **gathered** (a bank in its ``"gathered"`` layout, float32's default): each row's own
      ``A^T`` and ``scaling B^T`` gathered from the bank's per-rank stacks, then two batched
      matmuls (``bmm``) of one row each: the Gather-BMM form that Punica compares its SGMV
      kernel with (Chen et al. 2023). Only each row's own adapter is multiplied, so the cost
      follows the batch, not the number of adapters the bank holds.
    * **masked** (a bank in its ``"masked"`` layout, bf16's default; or no bank in bf16,
      which stacks the batch's adapters once per batch): one grouped product over every
      adapter of the bank (the batched-LoRA form of Punica / S-LoRA's SGMV, Chen et al.
      2023, Sheng et al. 2023, done with dense matmuls): the adapters' ``A`` stacked into
      ``A_cat`` (sum r_i, in), their ``B`` into ``B_cat`` (out, sum r_i), and a
      (B, sum r_i) row mask holding ``scaling_i`` on the columns of sample j's adapter and 0
      elsewhere, so ``out += ((x A_cat^T) * mask) B_cat^T`` adds exactly each row's own
      update in two matmuls per layer, whatever the mix.

    Measured (``benchmarks/bench_multi_lora.py``, 1 thread, batch 16, r=8 adapters on all
    three layers, float32, a 2-core AVX2 CPU without AMX; the base alone 1.8-1.95 ms per
    pass): with 16 adapters in the bank the per-adapter form adds 1.6-1.9 ms, masked
    0.9-1.1 ms, gathered 0.8-1.4 ms (equal within noise over seven runs); with 64 adapters
    in the bank masked adds 3.4 ms, gathered 0.7-0.8 ms (masked multiplies every row by
    every adapter of the bank, and small-batch float32 matmuls are compute-bound there). In
    bf16 on a 2-core AMX CPU masked measured 2x faster than per adapter (16 adapters in a
    batch of 16-32: 1.8-2.0 ms vs 3.7-4.0 ms per pass; many tiny bf16 matmuls each pay
    oneDNN's call overhead) and 1.3-1.9 ms with a bank (stacking per batch: 2.4-3.5 ms);
    the gathered form is not measured there, so bf16 keeps masked.

    Per batch only the rows' positions in the stacks (or the mask) are built, once for all
    layers whose stacks hold the same adapters.

    Args:
        adapters: length B, one entry per sample: an adapter, or None for the base alone.
            The same object may repeat; samples are grouped by identity.
        device: where the row indices live (the batch's device).
        bank: pre-stacked adapters (optional); used when it holds every adapter of the batch
            (same objects), ignored otherwise.
    """

    def __init__(
        self,
        adapters: Sequence[AdapterWeights | None],
        device: torch.device,
        bank: AdapterBank | None = None,
    ) -> None:
        self._adapters = list(adapters)
        self._device = device
        self.active = any(a is not None for a in self._adapters)
        distinct = {id(a): a for a in self._adapters if a is not None}.values()
        held = bank is not None and bank.holds(distinct)
        self.bank = bank if held else None
        self._banks: dict[torch.dtype, tuple[AdapterBank, _BankRows]] = {}
        if self.bank is not None:
            self._banks[self.bank.dtype] = (self.bank, self._rows_in(self.bank))
        self._groups: list[tuple[AdapterWeights, torch.Tensor]] | None = None

    @property
    def groups(self) -> list[tuple[AdapterWeights, torch.Tensor]]:
        """Each distinct adapter with the (n_i,) int64 indices of its rows (built on first use)."""
        if self._groups is None:
            rows: dict[int, tuple[AdapterWeights, list[int]]] = {}
            for i, adapter in enumerate(self._adapters):
                if adapter is not None:
                    rows.setdefault(id(adapter), (adapter, []))[1].append(i)
            self._groups = [
                (adapter, torch.tensor(idx, device=self._device)) for adapter, idx in rows.values()
            ]
        return self._groups

    def _rows_in(self, bank: AdapterBank) -> _BankRows:
        """The samples' slots in ``bank`` (-1: no adapter), for its per-batch lookups."""
        return _BankRows([bank.slot[id(a)] if a is not None else -1 for a in self._adapters])

    def _bank_for(self, dtype: torch.dtype) -> tuple[AdapterBank, _BankRows]:
        """The bank in ``dtype`` (the one given, else this batch's adapters stacked once
        per batch and dtype) and the samples' slots in it."""
        if dtype not in self._banks:
            bank = AdapterBank([a for a, _ in self.groups], dtype=dtype, device=self._device)
            self._banks[dtype] = (bank, self._rows_in(bank))
        return self._banks[dtype]

    def add_deltas(self, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Add each adapter's update of layer ``name`` to its rows of ``out``, in place.

        Args:
            x: the layer's input, (B, in_features).
            out: the base layer's output ``W x + b``, (B, out_features).

        Returns:
            ``out``, with ``scaling_i * B_i (A_i x)`` added to the rows of adapter ``i``.
        """
        if x.dtype == torch.float32 and x.dtype not in self._banks:
            for adapter, rows in self.groups:
                if name in adapter.A:
                    a = adapter.A[name].to(device=x.device, dtype=x.dtype)
                    b = adapter.B[name].to(device=x.device, dtype=x.dtype)
                    delta = F.linear(F.linear(x.index_select(0, rows), a), b) * adapter.scaling
                    out.index_add_(0, rows, delta)
            return out
        bank, rows = self._bank_for(x.dtype)
        return bank.add_deltas(name, x, out, rows)


class _BankRows:
    """One batch's view of a bank: each sample's slot, and what the batch derives from the
    slots once per set of stacks (row masks, gather positions), shared by the layers whose
    stacks hold the same adapters."""

    def __init__(self, slots: list[int]) -> None:
        self.slots = slots
        self._memo: dict[int, Any] = {}

    def derived(self, key: object, build: Callable[[], Any]) -> Any:
        """``build()``, once per ``key`` (compared by identity) for this batch."""
        k = id(key)
        if k not in self._memo:
            self._memo[k] = build()
        return self._memo[k]


@dataclass(frozen=True)
class _MaskedLayer:
    """One layer's stacks for the masked product (R = sum of the ranks targeting it)."""

    a_cat: torch.Tensor  # (R, in_features): the adapters' A matrices, stacked
    b_rows: torch.Tensor  # (R, out_features): their B matrices transposed, stacked
    owner: torch.Tensor  # (R,) int64: the bank slot of each row's adapter
    scale: torch.Tensor  # (R,) in the stacks' dtype: that adapter's scaling

    def add(self, x: torch.Tensor, out: torch.Tensor, rows: _BankRows) -> torch.Tensor:
        """``out += ((x A_cat^T) * mask) B_rows`` in place; the (B, R) mask (``scaling`` on
        the columns of each row's adapter, 0 elsewhere) built once per batch and owner layout."""

        def mask() -> torch.Tensor:
            slots = torch.tensor(rows.slots, device=self.owner.device)
            return (slots[:, None] == self.owner[None, :]).to(x.dtype).mul_(self.scale)

        scaled = F.linear(x, self.a_cat).mul_(rows.derived(self.owner, mask))
        return out.addmm_(scaled, self.b_rows)


@dataclass(frozen=True)
class _RankStack:
    """The adapters of one rank r targeting one layer, stacked for the gathered product."""

    a_t: torch.Tensor  # (n, in_features, r): each member's A transposed
    b_t: torch.Tensor  # (n, r, out_features): each member's scaling * B transposed
    members: tuple[int, ...]  # the bank slot of each entry (one tuple object per member set)

    def add(self, x: torch.Tensor, out: torch.Tensor, rows: _BankRows) -> torch.Tensor:
        """Add ``B_i (A_i x_j)`` (scaling folded in) to each row j whose adapter i is a
        member, in place: its matrices gathered, two ``bmm`` of one row each."""
        which, pos = rows.derived(self.members, lambda: self._positions(rows.slots))
        if pos.numel() == 0:
            return out
        xs = (x if which is None else x.index_select(0, which)).unsqueeze(1)  # (b, 1, in)
        h = torch.bmm(xs, self.a_t.index_select(0, pos))  # (b, 1, r)
        delta = torch.bmm(h, self.b_t.index_select(0, pos)).squeeze(1)  # (b, out)
        return out.add_(delta) if which is None else out.index_add_(0, which, delta)

    def _positions(self, slots: list[int]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(the batch rows whose adapter is a member, None meaning all; their positions)."""
        where = {slot: p for p, slot in enumerate(self.members)}
        mine = [j for j, s in enumerate(slots) if s in where]
        device = self.a_t.device
        pos = torch.tensor([where[slots[j]] for j in mine], dtype=torch.int64, device=device)
        if len(mine) == len(slots):
            return None, pos
        return torch.tensor(mine, device=device), pos


class AdapterBank:
    """The adapters a server holds for one base model, pre-stacked for the grouped product.

    Two layouts (see :class:`AdapterBatch` for what each computes and measured):

    * ``"gathered"`` (the default for float32): per layer and rank r, ``A^T`` stacked into
      (n, in, r) and ``scaling * B^T`` into (n, r, out) (:class:`_RankStack`);
    * ``"masked"`` (the default for other dtypes): per layer, ``A_cat`` (sum r_i, in), ``B``
      transposed and stacked into (sum r_i, out), each row's owner slot and ``scaling``
      (:class:`_MaskedLayer`). Contiguous (a transposed right operand measured up to 2x
      slower in bf16 on an AMX CPU).

    Immutable: when the set of adapters changes, build a new bank (tensors stay where the
    adapters are unless ``device`` says otherwise).

    Args:
        adapters: the adapters, all of one base model; slot ``k`` is ``adapters[k]``.
            Duplicates (the same object) are kept once.
        dtype, device: where the stacks go (default: the adapters' own dtype and device).
        layout: ``"gathered"`` or ``"masked"``; None: by dtype, as above.

    Raises:
        ValueError: an unknown ``layout``.
    """

    LAYOUTS = ("gathered", "masked")

    def __init__(
        self,
        adapters: Sequence[AdapterWeights],
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
        layout: str | None = None,
    ) -> None:
        unique = list({id(a): a for a in adapters}.values())
        self.adapters: tuple[AdapterWeights, ...] = tuple(unique)
        self.slot: dict[int, int] = {id(a): k for k, a in enumerate(unique)}
        first = next(iter(unique[0].A.values())) if unique else torch.empty(0)
        self.dtype: torch.dtype = dtype or first.dtype
        self.device: torch.device = device or first.device
        if layout is None:
            layout = "gathered" if self.dtype == torch.float32 else "masked"
        if layout not in self.LAYOUTS:
            raise ValueError(f"layout must be one of {self.LAYOUTS}, got {layout!r}")
        self.layout = layout
        self.masked: dict[str, _MaskedLayer] = {}
        self.stacks: dict[str, list[_RankStack]] = {}
        interned: dict[tuple[int, ...], tuple[int, ...]] = {}
        owners: dict[tuple[int, ...], torch.Tensor] = {}
        for name in LINEAR_NAMES:
            members = [(k, a) for k, a in enumerate(unique) if name in a.A]
            if not members:
                continue
            if layout == "masked":
                self.masked[name] = self._masked(name, members, owners)
                continue
            by_rank: dict[int, list[tuple[int, AdapterWeights]]] = {}
            for k, a in members:
                by_rank.setdefault(a.A[name].shape[0], []).append((k, a))
            self.stacks[name] = [self._stack(name, group, interned) for group in by_rank.values()]

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(device=self.device, dtype=self.dtype).contiguous()

    def _masked(
        self,
        name: str,
        members: list[tuple[int, AdapterWeights]],
        owners: dict[tuple[int, ...], torch.Tensor],
    ) -> _MaskedLayer:
        ranks = [a.A[name].shape[0] for _, a in members]
        owner = tuple(k for (k, _), r in zip(members, ranks, strict=True) for _ in range(r))
        scale = [a.scaling for (_, a), r in zip(members, ranks, strict=True) for _ in range(r)]
        if owner not in owners:  # one tensor per owner layout: its mask is built once a batch
            owners[owner] = torch.tensor(owner, device=self.device)
        return _MaskedLayer(
            self._cast(torch.cat([a.A[name] for _, a in members])),
            self._cast(torch.cat([a.B[name].t() for _, a in members])),
            owners[owner],
            self._cast(torch.tensor(scale)),
        )

    def _stack(
        self,
        name: str,
        group: list[tuple[int, AdapterWeights]],
        interned: dict[tuple[int, ...], tuple[int, ...]],
    ) -> _RankStack:
        slots = tuple(k for k, _ in group)
        return _RankStack(
            self._cast(torch.stack([a.A[name].t() for _, a in group])),
            self._cast(torch.stack([a.B[name].t() * a.scaling for _, a in group])),
            interned.setdefault(slots, slots),
        )

    def holds(self, adapters: Iterable[AdapterWeights]) -> bool:
        """Whether every adapter given (by identity) has a slot here."""
        return all(id(a) in self.slot and self.adapters[self.slot[id(a)]] is a for a in adapters)

    def __len__(self) -> int:
        return len(self.adapters)

    def add_deltas(
        self, name: str, x: torch.Tensor, out: torch.Tensor, rows: _BankRows
    ) -> torch.Tensor:
        """Add to ``out`` (B, out_features), in place, each row's own update of layer
        ``name`` for input ``x`` (B, in_features), the rows' slots in ``rows``; returns it."""
        if name in self.masked:
            return self.masked[name].add(x, out, rows)
        for stack in self.stacks.get(name, ()):
            stack.add(x, out, rows)
        return out


class MultiLoraLinear(nn.Module):
    """A pretrained linear layer serving any adapters of a batch, per sample.

    ``forward(x, adapters=None)``: x (B, in_features) -> (B, out_features) =
    ``base_layer(x)`` plus, for the rows of each adapter in ``adapters`` that targets this
    layer, ``scaling * B (A x)``. Holds no adapter weights itself.

    Args:
        base_layer: the shared ``nn.Linear`` (kept, not copied).
        name: the layer's name in the MLP (``linear1``...), the key of its adapter matrices.
    """

    def __init__(self, base_layer: nn.Linear, name: str) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"MultiLoraLinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.name = name

    def forward(self, x: torch.Tensor, adapters: AdapterBatch | None = None) -> torch.Tensor:
        out = self.base_layer(x)
        if adapters is not None and adapters.active:
            adapters.add_deltas(self.name, x, out)
        return out


def _wrap_linears(modules: dict[str, nn.Module]) -> None:
    for name in LINEAR_NAMES:
        layer = modules[name]
        if isinstance(layer, MultiLoraLinear):
            continue
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"{name} is {type(layer).__name__}: needs a plain MLP (no LoRA)")
        wrapper = MultiLoraLinear(layer, name)
        wrapper.training = layer.training  # the wrapped network's mode, unchanged
        modules[name] = wrapper


def enable_multi_lora(model: MLP) -> MLP:
    """Wrap every linear of ``model`` in :class:`MultiLoraLinear`, in place; returns it.

    For a network its caller owns (the serving cache's copy of a base model). Without
    ``adapters`` the wrapped network computes exactly what it did before.

    Raises:
        ValueError: ``model`` has injected LoRA layers (merge or remove them first).
    """
    if lora_layers(model):
        raise ValueError("enable_multi_lora needs a plain MLP (no injected LoRA layers)")
    _wrap_linears(model._modules)  # type: ignore[arg-type]
    return model


def _eval_view(model: MLP) -> MLP:
    """A shallow view of ``model`` in eval mode: same parameter tensors, its own modules.

    The view's linears are :class:`MultiLoraLinear` over ``model``'s; every other module is
    copied, so switching the view to eval mode leaves ``model``'s flags as they were.
    """
    if lora_layers(model):
        raise ValueError("forward_with_adapters needs a plain MLP (no injected LoRA layers)")
    view = copy.copy(model)
    view._modules = {k: copy.copy(m) for k, m in model._modules.items()}  # type: ignore[misc]
    _wrap_linears(view._modules)  # type: ignore[arg-type]
    view.training = False
    for module in view._modules.values():
        if not isinstance(module, MultiLoraLinear):
            module.train(False)
        else:
            module.training = False
    return view


@torch.inference_mode()
def forward_with_adapters(
    model: MLP, x: torch.Tensor, adapters: Sequence[AdapterWeights | None]
) -> torch.Tensor:
    """Logits for a batch in which sample ``i`` uses ``adapters[i]`` (None: base model only).

    Runs ``MLP.forward`` with an :class:`AdapterBatch` on a view of ``model``: one base
    matmul per layer for the whole batch plus one grouped low-rank product for all its
    adapters (Hu et al. 2021, eq. 3). Always eval semantics (no dropout); ``model`` is only read,
    never modified, so concurrent callers can share it.

    Args:
        model: a plain :class:`MLP`.
        x: float32 (B, 784) or (B, 1, 28, 28).
        adapters: length B; the same object may repeat (samples are grouped by identity).

    Returns:
        float32 logits (B, n_classes).

    Raises:
        ValueError: length mismatch, or ``model`` has injected LoRA layers.
    """
    if len(adapters) != x.shape[0]:
        raise ValueError(f"got {len(adapters)} adapters for a batch of {x.shape[0]}")
    return _eval_view(model)(x, adapters=AdapterBatch(adapters, x.device))
