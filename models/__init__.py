"""ML core: MNIST digit subsets, the MLP classifier, LoRA, training, checkpoints, adapters.

Plain PyTorch; nothing here imports the web service, the database or the worker.
See docs/CONTRACT.md for the public API.
"""

from models.adapter_io import AdapterError, load_adapter, save_adapter
from models.checkpoint import (
    CheckpointError,
    ModelMeta,
    load_model,
    load_training_state,
    save_model,
    save_training_state,
)
from models.classifier import LINEAR_NAMES, MLP, MLPConfig, count_parameters
from models.data import MNIST_MEAN, MNIST_STD, DigitSplits, load_digit_splits, normalize_images
from models.lora import (
    AdapterWeights,
    LoraConfig,
    LoraLinear,
    apply_adapter,
    inject_lora,
    lora_state_dict,
    merge_and_unload,
)
from models.multi_lora import forward_with_adapters
from models.training import EpochMetrics, TrainConfig, TrainResult, pick_device, train

__all__ = [
    "LINEAR_NAMES",
    "MLP",
    "MNIST_MEAN",
    "MNIST_STD",
    "AdapterError",
    "AdapterWeights",
    "CheckpointError",
    "DigitSplits",
    "EpochMetrics",
    "LoraConfig",
    "LoraLinear",
    "MLPConfig",
    "ModelMeta",
    "TrainConfig",
    "TrainResult",
    "apply_adapter",
    "count_parameters",
    "forward_with_adapters",
    "inject_lora",
    "load_adapter",
    "load_digit_splits",
    "load_model",
    "load_training_state",
    "lora_state_dict",
    "merge_and_unload",
    "normalize_images",
    "pick_device",
    "save_adapter",
    "save_model",
    "save_training_state",
    "train",
]
