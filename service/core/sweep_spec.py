"""The ``POST /sweeps`` body: a base and a grid of variants x seeds, validated here.

A sweep names its base either as an existing model (``base_model_id``) or as a
pre-training config to run first (``pretrain``, with ``base_seeds`` to pre-train several
bases), and a list of ``variants``: each a job kind with any of that kind's config fields
(:mod:`service.core.job_spec` holds every default and bound), run once per seed of
``seeds`` (the variant's ``config.seed``). Seeds vary the fine-tuning runs from the one
base, whose own seed is fixed; ``base_seeds`` puts the base's variance in the interval too
(every fine-tune cell then runs from every base).

A ``pretrain`` variant is the *ceiling*: the same MLP trained from random weights on the
fine-tuning digits (its ``classes`` default to the fine-tunes' default, 5-9, not 0-4).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.core.job_spec import (
    MAX_SEED,
    SPECS,
    FinetuneLoraSpec,
    JobSpec,
    PretrainSpec,
    SpecMismatch,
)
from service.core.vocab import MAX_ID_LENGTH, JobKind

MAX_VARIANTS = 100
MAX_SEEDS = 100
SHORT_KIND = {"pretrain": "pretrain", "finetune_full": "full", "finetune_lora": "lora"}
CEILING_CLASSES = FinetuneLoraSpec.model_fields["classes"].get_default(call_default_factory=True)
"""The digits a ``pretrain`` variant trains on unless it says otherwise (5-9)."""


class SweepVariant(BaseModel):
    """One row of the grid: a job kind and config fields of that kind (not ``seed``)."""

    model_config = ConfigDict(extra="forbid")

    kind: JobKind
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Fields of the kind's job config (POST /jobs); the seed comes from `seeds`.",
    )
    name: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="Label of the row (default: the kind and the fields given, e.g. "
        "`lora r=4 lr=0.002`); unique in the sweep.",
    )

    def label(self) -> str:
        """``name``, or the kind and the given fields, e.g. ``lora r=4 lr=0.002``."""
        if self.name:
            return self.name
        shown = {k: v for k, v in self.config.items() if k not in ("epochs", "max_train_samples")}
        parts = [SHORT_KIND[self.kind], *(f"{k}={_short(v)}" for k, v in shown.items())]
        return " ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class SweepCreate(BaseModel):
    """``POST /sweeps``: exactly one of ``base_model_id`` and ``pretrain``; ``variants`` x
    ``seeds`` (at most ``SWEEP_MAX_JOBS`` jobs in all, checked with the settings)."""

    model_config = ConfigDict(extra="forbid")

    base_model_id: str | None = Field(
        None, min_length=1, max_length=MAX_ID_LENGTH, description="An existing base model."
    )
    pretrain: PretrainSpec | None = Field(
        None, description="Instead of base_model_id: pre-train the base first (a pretrain config)."
    )
    base_seeds: list[int] | None = Field(
        None,
        min_length=1,
        max_length=MAX_SEEDS,
        description="With `pretrain`: pre-train one base per seed and run every fine-tune "
        "cell from each (default: one base, with the pretrain config's seed).",
    )
    variants: list[SweepVariant] = Field(min_length=1, max_length=MAX_VARIANTS)
    seeds: list[int] = Field(
        default_factory=lambda: [0],
        min_length=1,
        max_length=MAX_SEEDS,
        description="Seeds of every variant's runs (its config.seed).",
    )

    @model_validator(mode="after")
    def _one_base(self) -> SweepCreate:
        if (self.base_model_id is None) == (self.pretrain is None):
            raise ValueError("give exactly one of base_model_id and pretrain")
        if self.base_seeds is not None and self.pretrain is None:
            raise ValueError("base_seeds needs pretrain (a given base model has one seed)")
        for name, values in (("seeds", self.seeds), ("base_seeds", self.base_seeds or [])):
            if len(set(values)) != len(values) or any(not 0 <= v <= MAX_SEED for v in values):
                raise ValueError(f"{name} must be distinct integers in [0, {MAX_SEED}]")
        labels = [v.label() for v in self.variants]
        if len(set(labels)) != len(labels):
            raise ValueError(f"variant names must be unique, got {labels}")
        return self

    def bases(self) -> list[PretrainSpec]:
        """The pre-training spec of each base to run (none for ``base_model_id``)."""
        if self.pretrain is None:
            return []
        seeds = self.base_seeds or [self.pretrain.seed]
        return [self.pretrain.model_copy(update={"seed": s}) for s in seeds]

    def n_jobs(self) -> int:
        """Every job the sweep creates: the bases, each fine-tune cell once per base, each
        ``pretrain`` variant once per seed."""
        n_bases = max(1, len(self.bases()))
        per_seed = sum(1 if v.kind == "pretrain" else n_bases for v in self.variants)
        return len(self.bases()) + per_seed * len(self.seeds)


def variant_spec(variant: SweepVariant, index: int, seed: int) -> JobSpec:
    """The job spec of ``variant`` at ``seed`` (a ``pretrain`` variant's ``classes``
    default to 5-9).

    Raises:
        SpecMismatch: the config does not validate (param ``variants.<index>.config.<field>``)
            or names ``seed``.
    """
    where = f"variants.{index}.config"
    if "seed" in variant.config:
        raise SpecMismatch(f"{where}.seed", f"{where}.seed: a sweep's seeds come from `seeds`.")
    fields = dict(variant.config)
    if variant.kind == "pretrain" and "classes" not in fields and "digits" not in fields:
        fields["classes"] = list(CEILING_CLASSES)
    try:
        return SPECS[variant.kind].model_validate({**fields, "seed": seed})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        param = f"{where}.{loc}" if loc else where
        extra = len(exc.errors()) - 1
        more = f" (and {extra} more problem(s))" if extra else ""
        raise SpecMismatch(param, f"{param}: {first['msg']}{more}") from exc
