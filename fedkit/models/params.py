"""torch <-> Params: a model's state as an ordered list of numpy arrays (state_dict order)."""

from __future__ import annotations

from collections.abc import Sequence

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


def named_by(names: Sequence[str], parts: Sequence[str]) -> list[int]:
    """Positions of the dotted ``names`` that contain one of ``parts`` as a whole component
    (``lora_A`` picks ``1.lora_A.weight``, not ``1.lora_AB``): how a PEFT spec names the
    factors that stay frozen or stay on the client."""
    return [i for i, n in enumerate(names) if any(f".{p}." in f".{n}." for p in parts)]


def param_specs(params: Params) -> list[tuple[tuple[int, ...], np.dtype]]:
    return [(a.shape, a.dtype) for a in params]
