"""Models: torch <-> Params, reference models by name, local training."""

from fedkit.models.params import get_params, set_params
from fedkit.models.registry import MODELS, build_model, init_model
from fedkit.models.train import TrainConfig, evaluate, train

__all__ = [
    "MODELS", "TrainConfig", "build_model", "evaluate", "get_params", "init_model", "set_params", "train",
]
