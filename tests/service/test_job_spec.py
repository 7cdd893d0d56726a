"""The job spec is the one home of job defaults: models/' own defaults agree with it, every
spec field reaches the models/ configs, and stored rows parse back into the same type."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from models.classifier import MLPConfig
from models.data import load_digit_splits
from models.lora import LoraConfig
from models.training import TrainConfig
from service.core.job_spec import (
    MAX_RUNTIME_SECONDS,
    SPECS,
    FinetuneFullSpec,
    FinetuneLoraSpec,
    PretrainSpec,
    SpecMismatch,
    parse_stored,
)


def _defaults(cls: type) -> dict:
    return {
        f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
    }


def test_models_defaults_agree_with_the_spec() -> None:
    pre, lora = PretrainSpec(), FinetuneLoraSpec()
    assert dataclasses.asdict(MLPConfig()) == dataclasses.asdict(pre.mlp_config())
    assert dataclasses.asdict(LoraConfig()) == dataclasses.asdict(lora.lora_config())
    train = pre.train_config()
    defaults = _defaults(TrainConfig)
    assert "lr_schedule" not in defaults  # required: the spec and round one's loop differed
    assert defaults == {k: getattr(train, k) for k in defaults}


def test_data_loading_defaults_agree_with_the_spec() -> None:
    params = inspect.signature(load_digit_splits).parameters
    pre = PretrainSpec()
    assert list(params["classes"].default) == pre.classes
    assert params["val_fraction"].default == pre.val_fraction
    assert params["seed"].default == pre.seed


def test_every_spec_field_reaches_the_models_configs() -> None:
    spec = FinetuneLoraSpec(
        classes=[9, 8, 7, 6, 5], epochs=3, lr=0.02, weight_decay=0.1, batch_size=7,
        lr_schedule="constant", seed=11, r=3, lora_alpha=5.0, target_modules=["linear2"],
        lora_dropout=0.25, use_rslora=True,
    )  # fmt: skip
    assert spec.train_config() == TrainConfig(
        epochs=3, lr=0.02, weight_decay=0.1, batch_size=7, seed=11, lr_schedule="constant"
    )
    assert spec.lora_config() == LoraConfig(
        r=3, lora_alpha=5.0, target_modules=("linear2",), lora_dropout=0.25, use_rslora=True
    )
    arch = PretrainSpec(classes=[1, 2, 3], hidden1=9, hidden2=8, dropout=0.1).mlp_config()
    assert arch == MLPConfig(hidden1=9, hidden2=8, n_classes=3, dropout=0.1)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_stored_spec_parses_back_to_the_same_type(kind: str) -> None:
    spec = SPECS[kind]()
    again = parse_stored(kind, spec.model_dump(mode="json"))
    assert type(again) is type(spec) and again == spec


def test_old_name_digits_is_accepted_but_not_both() -> None:
    assert FinetuneFullSpec.model_validate({"digits": [1, 2, 3, 4, 5]}).classes == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError):
        FinetuneFullSpec.model_validate({"digits": [1, 2], "classes": [1, 2]})


def test_round_one_rows_take_the_values_they_ran_with() -> None:
    early = parse_stored("finetune_lora", {"digits": [5, 6, 7, 8, 9], "r": 4})
    assert early.lr_schedule == "constant" and early.dropout is None  # base's dropout
    assert early.lora_alpha == 8.0
    late = parse_stored("finetune_full", {"lr_schedule": "cosine", "dropout": 0.0})
    assert late.lr_schedule == "cosine" and late.dropout == 0.0
    assert PretrainSpec().lr_schedule == "cosine"  # new requests get today's default


def test_max_runtime_seconds_is_bounded_and_the_smaller_limit_applies(client) -> None:
    assert PretrainSpec().max_runtime_seconds is None  # rows before the field: no own limit
    assert PretrainSpec().runtime_limit(None) is None
    assert PretrainSpec().runtime_limit(60.0) == 60.0
    assert PretrainSpec(max_runtime_seconds=30).runtime_limit(None) == 30.0
    assert PretrainSpec(max_runtime_seconds=30).runtime_limit(60.0) == 30.0  # the smaller
    assert PretrainSpec(max_runtime_seconds=90).runtime_limit(60.0) == 60.0
    for bad in (0, -1, MAX_RUNTIME_SECONDS + 1, "soon"):
        body = {"kind": "finetune_lora", "base_model_id": "mdl_x",
                "config": {"max_runtime_seconds": bad}}  # fmt: skip
        resp = client.post("/jobs", json=body)
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["param"] == "config.max_runtime_seconds", resp.text
    resp = client.post("/jobs", json={"kind": "pretrain", "config": {"max_runtime": 5}})
    assert resp.status_code == 422 and resp.json()["error"]["param"] == "config.max_runtime"


def test_check_against_base_names_the_field() -> None:
    base = MLPConfig(hidden1=32, hidden2=48, n_classes=5)
    FinetuneLoraSpec(r=32).check_against_base(base)
    with pytest.raises(SpecMismatch) as err:
        FinetuneLoraSpec(r=33).check_against_base(base)
    assert err.value.param == "config.r"
    with pytest.raises(SpecMismatch) as err:
        FinetuneFullSpec(classes=[5, 6]).check_against_base(base)
    assert err.value.param == "config.classes"


def test_both_names_are_refused_with_a_message_naming_both(client) -> None:
    body = {"kind": "pretrain", "config": {"digits": [0, 1], "classes": [0, 1]}}
    resp = client.post("/jobs", json=body)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "validation_error" and error["param"] == "config"
    assert "give classes or its old name digits, not both" in error["message"]
    resp = client.post(
        "/evaluate", json={"model_id": "m", "classes": [0, 1], "head_classes": [0, 1]}
    )
    assert resp.status_code == 422 and "head_classes, not both" in resp.json()["error"]["message"]
