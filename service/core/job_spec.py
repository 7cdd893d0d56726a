"""The job spec: one typed config per job kind, the only home of job defaults and bounds.

``POST /jobs`` validates its ``config`` with these classes, the job row stores
``spec.model_dump()``, and the worker parses that JSON back with :func:`parse_stored` into
the same class and derives the ``models/`` configs from it by method
(:meth:`JobSpec.train_config`, :meth:`PretrainSpec.mlp_config`,
:meth:`FinetuneLoraSpec.lora_config`), never by string keys. Checks that need the base
model (its head size, r against its layer widths) are :meth:`JobSpec.check_against_base`,
run at submission and again by the worker against the weights it loads.

Defaults reproduce the seed notebook, with the fine-tuning schedule measured in round one:

* ``pretrain``: digits 0-4, 30 epochs, Adam lr 1e-3, weight decay 1e-4, batch 128,
  hidden sizes 1000/2000, dropout 0.5.
* ``finetune_full``: digits 5-9, 10 epochs, lr 1e-5 (the seed's), weight decay 1e-4; every
  weight of the base trains; no dropout while fine-tuning.
* ``finetune_lora``: digits 5-9, 10 epochs, r 8 on all three linears, ``lora_alpha`` 2r (so
  ``scaling = alpha / r`` is 2 at every rank), lr 1e-3 (only A and B train, from B = 0),
  no weight decay, no dropout.
* every kind: cosine learning-rate schedule, seed 0, 30 % of MNIST's training set held
  out for validation; the weights of the last epoch and of the best (lowest ``val_loss``)
  kept as checkpoints, and the best one becomes the result (``select``); no early
  stopping.

Round-one rows: ``classes`` was called ``digits`` (still accepted, in requests too), and
fields added later are absent from early rows; each spec's ``legacy_values`` gives them the
value the round-one code ran with, not today's default (e.g. ``select: last``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from models.classifier import LINEAR_NAMES, MLPConfig, linear_shapes
from models.early_stopping import WATCHED_METRICS, EarlyStopping
from models.lora import LoraConfig
from models.precision import PRECISIONS
from models.training import LR_SCHEDULES, TrainConfig
from service.core.vocab import JOB_KINDS, MAX_ID_LENGTH, DigitList, JobKind, refuse_both_names

MAX_EPOCHS = 500
MAX_HIDDEN = 8192
MAX_RANK = 1024
MAX_SEED = 2**31 - 1
MNIST_TRAIN_SIZE = 60_000
MAX_RUNTIME_SECONDS = 7 * 24 * 3600  # a week: the bound of a job's max_runtime_seconds

LinearName = Literal[LINEAR_NAMES]  # type: ignore[valid-type]
LrSchedule = Literal[LR_SCHEDULES]  # type: ignore[valid-type]
WatchedMetric = Literal[WATCHED_METRICS]  # type: ignore[valid-type]
TrainPrecision = Literal[PRECISIONS]  # type: ignore[valid-type]

# Each field's bounds and meaning, written once; the specs below only set defaults.
Classes = Annotated[
    DigitList,
    Field(
        min_length=2,
        max_length=10,
        validation_alias=AliasChoices("classes", "digits"),
        description="Distinct digits to train on, in head order: output i means classes[i] "
        "(`digits` is accepted as the old name).",
    ),
]
Epochs = Annotated[int, Field(ge=1, le=MAX_EPOCHS, description="Passes over the train split.")]
LearningRate = Annotated[float, Field(gt=0, le=1.0, description="Adam learning rate.")]
WeightDecay = Annotated[float, Field(ge=0, le=1.0, description="Adam (L2) weight decay.")]
FinetuneDropout = Annotated[
    float | None,
    Field(
        ge=0,
        le=0.9,
        description="Dropout on the base's hidden layers while fine-tuning (default 0, which "
        "measured better than the base's 0.5; null keeps the base's own). The architecture is "
        "unchanged and dropout is off at inference.",
    ),
]


class EarlyStoppingSpec(BaseModel):
    """``early_stopping``: end a job once ``metric`` stops improving (off when absent)."""

    model_config = ConfigDict(extra="forbid")

    patience: int = Field(
        ge=1, le=MAX_EPOCHS, description="Epochs in a row without improvement before stopping."
    )
    min_delta: float = Field(
        0.0, ge=0, le=10.0, description="Smallest change that counts as an improvement."
    )
    metric: WatchedMetric = Field(
        "val_loss", description="val_loss (lower is better) or val_accuracy (higher is better)."
    )

    def rule(self) -> EarlyStopping:
        """The rule for ``models.training.train``."""
        return EarlyStopping(patience=self.patience, min_delta=self.min_delta, metric=self.metric)


class SpecMismatch(ValueError):
    """A spec that does not fit its base model; ``param`` is the request field at fault."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


class JobSpec(BaseModel):
    """Fields every job kind has. Subclasses set the defaults of their kind.

    ``legacy_values``: per kind, the value a field had in round-one runs whose rows predate
    it (see :func:`parse_stored`).
    """

    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[JobKind]
    legacy_values: ClassVar[dict[str, Any]]

    classes: Classes
    epochs: Epochs
    lr: LearningRate
    weight_decay: WeightDecay
    batch_size: int = Field(128, ge=1, le=8192, description="Samples per optimisation step.")
    lr_schedule: LrSchedule = Field(
        "cosine",
        description="Per-epoch learning rate: constant, or cosine annealing from lr towards 0 "
        "(epoch e of E at lr * (1 + cos(pi * (e - 1) / E)) / 2).",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the split, init and shuffling.")
    val_fraction: float = Field(
        0.3, ge=0.05, le=0.5, description="Share of MNIST's training set held out for validation."
    )
    max_train_samples: int | None = Field(
        None,
        ge=1,
        le=MNIST_TRAIN_SIZE,
        description="Train on at most this many samples of the train split (the first ones of "
        "its seeded shuffle); null = all. Validation and test sets are never cut. For quick "
        "runs, smoke tests and demos.",
    )
    keep_checkpoints: int = Field(
        1,
        ge=1,
        le=MAX_EPOCHS,
        description="Keep the weights of the last N epochs, plus the best one, as checkpoints "
        "(GET /jobs/{id}/checkpoints; any can be published as a model or adapter).",
    )
    select: Literal["best", "last"] = Field(
        "best",
        description="Which epoch's weights become the job's model or adapter: the best by "
        "select_metric, or the last trained.",
    )
    select_metric: WatchedMetric = Field(
        "val_loss", description="What 'best' means: lowest val_loss or highest val_accuracy."
    )
    early_stopping: EarlyStoppingSpec | None = Field(
        None, description="Stop once a validation metric stops improving; off when null."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(  # issue 15: routed by service.jobs.queue
        "auto",
        description="Where to train: `auto` (the ordinary queue; CUDA when the worker has "
        "it), `cpu`, or `cuda` (the GPU queue; fails `no_gpu_worker` when no GPU worker "
        "takes it within GPU_WAIT_SECONDS).",
    )
    precision: TrainPrecision = Field(
        "fp32",
        description="Matmul precision: fp32, bf16 (autocast; fp32 master weights, optimizer "
        "state and loss) or auto (bf16 where the device has bf16 hardware: CUDA with bf16, a "
        "CPU with AMX/AVX512-BF16; else fp32). The job result and its model or adapter "
        "record the precision it resolved to.",
    )

    max_runtime_seconds: float | None = Field(  # issue 17: see runtime_limit
        None,
        gt=0,
        le=MAX_RUNTIME_SECONDS,
        description="Longest this job may run, from its first start (s, resumes included); "
        "past it the job ends failed with code timeout. With the JOB_MAX_RUNTIME_SECONDS "
        "setting also set, the smaller of the two applies; null: the setting alone.",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_name_each(cls, data: object) -> object:
        refuse_both_names(data, {"classes": "digits"})
        return data

    def runtime_limit(self, service_limit: float | None) -> float | None:
        """The job's maximum runtime in seconds: the smaller of ``max_runtime_seconds`` and
        ``service_limit`` (the ``JOB_MAX_RUNTIME_SECONDS`` setting), whichever are set;
        None when neither is (no limit)."""
        limits = [x for x in (self.max_runtime_seconds, service_limit) if x is not None]
        return min(limits) if limits else None

    def train_config(self) -> TrainConfig:
        """The optimisation settings for ``models.training.train``."""
        return TrainConfig(
            epochs=self.epochs,
            lr=self.lr,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            seed=self.seed,
            lr_schedule=self.lr_schedule,
            precision=self.precision,
        )

    def check_against_base(self, architecture: MLPConfig) -> None:
        """Check the spec against its base network (fine-tunes override this; pre-training
        has no base, so nothing to check).

        Raises:
            SpecMismatch: the spec does not fit ``architecture``.
        """


class PretrainSpec(JobSpec):
    """Train a fresh MLP (784 -> hidden1 -> hidden2 -> len(classes))."""

    kind: ClassVar[JobKind] = "pretrain"
    legacy_values: ClassVar[dict[str, Any]] = {"lr_schedule": "constant", "select": "last"}
    """Before the cosine schedule every run was constant; before checkpoints, every job
    kept its last epoch."""

    classes: Classes = Field(default_factory=lambda: [0, 1, 2, 3, 4])
    epochs: Epochs = 30
    lr: LearningRate = 1e-3
    weight_decay: WeightDecay = 1e-4
    hidden1: int = Field(1000, ge=1, le=MAX_HIDDEN, description="Width of linear1's output.")
    hidden2: int = Field(2000, ge=1, le=MAX_HIDDEN, description="Width of linear2's output.")
    dropout: float = Field(0.5, ge=0, le=0.9, description="Dropout after each hidden layer.")

    def mlp_config(self) -> MLPConfig:
        """The architecture of the network to train (784 inputs, one output per class)."""
        return MLPConfig(
            hidden1=self.hidden1,
            hidden2=self.hidden2,
            n_classes=len(self.classes),
            dropout=self.dropout,
        )


class _FinetuneSpec(JobSpec):
    """What both fine-tunes share: digits 5-9, 10 epochs, no dropout, a base to fit."""

    legacy_values: ClassVar[dict[str, Any]] = {
        "lr_schedule": "constant",
        "dropout": None,
        "select": "last",
    }
    """Before fine-tuning dropout existed, fine-tunes kept the base's (``None``); before
    checkpoints, every job kept its last epoch."""

    classes: Classes = Field(default_factory=lambda: [5, 6, 7, 8, 9])
    epochs: Epochs = 10
    dropout: FinetuneDropout = 0.0

    def check_against_base(self, architecture: MLPConfig) -> None:
        """The head is reused, so ``len(classes)`` must equal its size.

        Raises:
            SpecMismatch: param ``config.classes``.
        """
        if len(self.classes) != architecture.n_classes:
            raise SpecMismatch(
                "config.classes",
                f"config.classes: the base model has a {architecture.n_classes}-way head; give "
                f"exactly {architecture.n_classes} distinct digits, got {self.classes}.",
            )


class FinetuneFullSpec(_FinetuneSpec):
    """Fine-tune every weight of a copy of the base model; registers a new model."""

    kind: ClassVar[JobKind] = "finetune_full"

    lr: LearningRate = 1e-5
    weight_decay: WeightDecay = 1e-4


class FinetuneLoraSpec(_FinetuneSpec):
    """Train a LoRA adapter on the frozen base model; registers an adapter."""

    kind: ClassVar[JobKind] = "finetune_lora"

    lr: LearningRate = 1e-3
    weight_decay: WeightDecay = 0.0
    r: int = Field(
        8,
        ge=1,
        le=MAX_RANK,
        description="Rank of the update; at most the input width of every targeted layer.",
    )
    lora_alpha: float | None = Field(
        None,
        gt=0,
        le=4096,
        description="Scale numerator: scaling = lora_alpha / r (or / sqrt(r) with use_rslora). "
        "Default (null) 2 * r, so scaling is 2 at every rank.",
    )
    target_modules: list[LinearName] = Field(
        default_factory=lambda: list(LINEAR_NAMES),
        min_length=1,
        max_length=len(LINEAR_NAMES),
        description="Linears of the MLP that get an adapter.",
    )
    lora_dropout: float = Field(0.0, ge=0, le=0.9, description="Dropout on the adapter input.")
    use_rslora: bool = Field(False, description="Scale by alpha / sqrt(r) (rsLoRA).")

    @field_validator("target_modules")
    @classmethod
    def _distinct_targets(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("target_modules must be distinct")
        return names

    @model_validator(mode="after")
    def _default_alpha(self) -> FinetuneLoraSpec:
        if self.lora_alpha is None:
            self.lora_alpha = 2.0 * self.r
        return self

    def lora_config(self) -> LoraConfig:
        """The adapter's hyper-parameters for ``models.lora.inject_lora``."""
        assert self.lora_alpha is not None  # filled in by _default_alpha
        return LoraConfig(
            r=self.r,
            lora_alpha=float(self.lora_alpha),
            target_modules=tuple(self.target_modules),
            lora_dropout=self.lora_dropout,
            use_rslora=self.use_rslora,
        )

    def check_against_base(self, architecture: MLPConfig) -> None:
        """As the other fine-tune, and ``r`` at most the input width of every targeted
        layer (784, hidden1, hidden2 for linear1..3). The head's 5 outputs do not bound
        ``r``: the seed's r = 8 on all three linears is allowed, as peft allows it.

        Raises:
            SpecMismatch: param ``config.classes`` or ``config.r``.
        """
        super().check_against_base(architecture)
        shapes = linear_shapes(architecture)
        limit = min(shapes[name][0] for name in self.target_modules)
        if self.r > limit:
            raise SpecMismatch(
                "config.r",
                f"config.r: r={self.r} exceeds {limit}, the smallest input width of the "
                f"targeted layers {self.target_modules} of the base model.",
            )


SPECS: dict[str, type[JobSpec]] = {
    s.kind: s for s in (PretrainSpec, FinetuneFullSpec, FinetuneLoraSpec)
}
assert tuple(SPECS) == JOB_KINDS, "one spec per job kind"


def parse_stored(kind: str, config: Mapping[str, Any]) -> JobSpec:
    """The spec of a stored job row (``jobs.config``); fields a round-one row lacks take
    the value round one ran with (the spec's ``legacy_values``), not today's default.

    Raises:
        ValueError: unknown ``kind``; pydantic's ``ValidationError`` (a ValueError) for a
            config that no longer validates.
    """
    spec = SPECS.get(kind)
    if spec is None:
        raise ValueError(f"unknown job kind {kind!r}")
    legacy = {k: v for k, v in spec.legacy_values.items() if k not in config}
    return spec.model_validate({**legacy, **config})


# ------------------------------------------------------------------- the POST /jobs body


WebhookUrl = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=2000,
        description="POST a signed event (Standard Webhooks) here when the job succeeds, "
        "fails or is cancelled; http(s) only. Default: the WEBHOOK_URL setting.",
    ),
]


class _JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook_url: WebhookUrl = None


class PretrainJobCreate(_JobCreate):
    """``POST /jobs`` body for pre-training (no base model)."""

    kind: Literal[PretrainSpec.kind]  # type: ignore[valid-type]
    base_model_id: None = Field(None, description="Must be absent: pre-training starts fresh.")
    config: PretrainSpec = Field(default_factory=PretrainSpec)


class FinetuneFullJobCreate(_JobCreate):
    """``POST /jobs`` body for a full fine-tune of ``base_model_id``."""

    kind: Literal[FinetuneFullSpec.kind]  # type: ignore[valid-type]
    base_model_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    config: FinetuneFullSpec = Field(default_factory=FinetuneFullSpec)


class FinetuneLoraJobCreate(_JobCreate):
    """``POST /jobs`` body for a LoRA fine-tune of ``base_model_id``."""

    kind: Literal[FinetuneLoraSpec.kind]  # type: ignore[valid-type]
    base_model_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    config: FinetuneLoraSpec = Field(default_factory=FinetuneLoraSpec)


JobCreateUnion = Annotated[
    PretrainJobCreate | FinetuneFullJobCreate | FinetuneLoraJobCreate,
    Field(discriminator="kind"),
]
_TAG_ERRORS = ("union_tag_invalid", "union_tag_not_found")


class JobCreate(RootModel[JobCreateUnion]):
    """The ``POST /jobs`` body: the ``kind`` field selects the spec of ``config``.

    Validation errors are reported at the request's own paths (``config.r``, ``kind``),
    without the union tag pydantic puts in front (``finetune_lora.config.r``).
    """

    @model_validator(mode="wrap")
    @classmethod
    def _untagged_errors(cls, data: object, handler):  # noqa: ANN206 (pydantic handler)
        try:
            return handler(data)
        except ValidationError as exc:
            details: list[InitErrorDetails] = []
            for err in exc.errors():
                loc = tuple(err["loc"])
                if err["type"] in _TAG_ERRORS:
                    loc = ("kind",)
                elif loc and loc[0] in SPECS:
                    loc = loc[1:]
                detail = InitErrorDetails(type=err["type"], loc=loc, input=err.get("input"))
                if "ctx" in err:
                    detail["ctx"] = err["ctx"]
                details.append(detail)
            raise ValidationError.from_exception_data(exc.title, details) from None
