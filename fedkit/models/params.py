"""torch <-> Params: a model's state as an ordered list of numpy arrays (state_dict order)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedkit.types import Params


def get_params(module: nn.Module) -> Params:
    return [t.detach().cpu().numpy().copy() for t in module.state_dict().values()]


def set_params(module: nn.Module, params: Params) -> None:
    state = module.state_dict()
    if len(state) != len(params):
        raise ValueError(f"model has {len(state)} tensors, got {len(params)} arrays")
    with torch.no_grad():
        for (name, t), a in zip(state.items(), params, strict=True):
            if tuple(t.shape) != a.shape:
                raise ValueError(f"{name}: model shape {tuple(t.shape)}, got {a.shape}")
            t.copy_(torch.from_numpy(np.require(a, requirements="W")))


def param_specs(params: Params) -> list[tuple[tuple[int, ...], np.dtype]]:
    return [(a.shape, a.dtype) for a in params]
