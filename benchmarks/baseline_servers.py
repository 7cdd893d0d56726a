"""The servers a user would write first, for ``bench_predict.py``'s baselines (issue 16).

Both take the service's JSON body (``{"pixels": 28 x 28 values 0-255, "model_id"?,
"adapter_id"?}``), decode it with the service's own code (``service.serving.images``) and
answer ``{"digit", "probabilities"}``, so only the serving strategy differs:

(f) :func:`create_plain_app`: a FastAPI ``def`` route (run in Starlette's threadpool) that
    runs one forward pass of the base model per request: no micro-batching, no adapters.
(g) :func:`create_peft_app`: the same route over one ``peft.PeftModel`` holding every
    adapter (``load_adapter`` for each), switching with ``set_adapter`` under a lock per
    request, the pattern discussed in huggingface/peft#804 (a PeftModel serves one active
    adapter at a time, so concurrent requests for different adapters must serialise).

Configured by environment variables (read here: these are benchmark scaffolding, not the
service): ``BASELINE_MODEL_DIR`` (a ``models.checkpoint.save_model`` directory) and, for
(g), ``BASELINE_ADAPTERS`` (``id=directory`` pairs separated by commas, PEFT layout).
Run with ``uvicorn benchmarks.baseline_servers:create_plain_app --factory``.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import torch
from fastapi import FastAPI

from models.checkpoint import load_model
from service.serving.images import pixels_to_images, to_model_input

CLASSES = ("0", "1", "2", "3", "4")
ADAPTER_CLASSES = ("5", "6", "7", "8", "9")


def _answer(logits: torch.Tensor, classes: tuple[str, ...]) -> dict[str, Any]:
    probs = torch.softmax(logits, dim=1)[0]
    return {
        "digit": int(classes[int(probs.argmax())]),
        "probabilities": dict(zip(classes, probs.tolist(), strict=True)),
    }


def _input(body: dict[str, Any]) -> torch.Tensor:
    """(1, 784) float32 from the JSON body's 28 x 28 ``pixels``."""
    return to_model_input(pixels_to_images(body["pixels"]))


def _base_model() -> torch.nn.Module:
    model, _ = load_model(os.environ["BASELINE_MODEL_DIR"])
    return model.eval().requires_grad_(False)


def _app_with_ping() -> FastAPI:
    """A bare FastAPI app with the same ``GET /predict/ping`` as the service (phase (a))."""
    app = FastAPI()

    @app.get("/predict/ping")
    def ping() -> dict[str, str]:
        return {"status": "ok"}

    return app


def create_plain_app() -> FastAPI:
    """(f): one forward pass of the base model per request, in the threadpool."""
    torch.set_num_threads(1)
    model = _base_model()
    app = _app_with_ping()

    @app.post("/predict")
    def predict(body: dict[str, Any]) -> dict[str, Any]:
        with torch.inference_mode():
            return _answer(model(_input(body)), CLASSES)

    return app


def create_peft_app() -> FastAPI:
    """(g): one PeftModel with every adapter; ``set_adapter`` under a lock per request."""
    import peft

    torch.set_num_threads(1)
    pairs = [p.split("=", 1) for p in os.environ["BASELINE_ADAPTERS"].split(",") if p]
    (first_id, first_dir), rest = pairs[0], pairs[1:]
    model = peft.PeftModel.from_pretrained(_base_model(), first_dir, adapter_name=first_id)
    for adapter_id, directory in rest:
        model.load_adapter(directory, adapter_name=adapter_id)
    model.eval()
    lock = threading.Lock()
    app = _app_with_ping()

    @app.post("/predict")
    def predict(body: dict[str, Any]) -> dict[str, Any]:
        x = _input(body)
        with lock, torch.inference_mode():
            model.set_adapter(body["adapter_id"])
            return _answer(model(x), ADAPTER_CLASSES)

    return app
