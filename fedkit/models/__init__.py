"""Models: torch <-> Params, reference models by name, local training."""

from fedkit.models import tiny_transformers as tiny_transformers  # registers vit_tiny, char_lm
from fedkit.models.params import get_params, set_params
from fedkit.models.registry import MODELS, build_model, init_model
from fedkit.models.train import LocalData, TrainConfig, evaluate, keyed_torch, sgd_train

__all__ = [
    "MODELS", "LocalData", "TrainConfig", "build_model", "evaluate", "get_params", "init_model",
    "keyed_torch", "set_params", "sgd_train",
]
