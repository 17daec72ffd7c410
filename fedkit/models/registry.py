"""Reference models by name, plus any ``module:function`` factory a user points to.

A factory is ``fn(input_shape, num_classes, **kwargs) -> nn.Module``. Models are described by a
JSON-able spec (``{"name": ..., **kwargs}``) so a server can tell a device what to build.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

ModelFactory = Callable[..., nn.Module]
MODELS: dict[str, ModelFactory] = {}


def register(name: str) -> Callable[[ModelFactory], ModelFactory]:
    def deco(fn: ModelFactory) -> ModelFactory:
        MODELS[name] = fn
        return fn

    return deco


@register("logreg")
def logreg(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Multinomial logistic regression (FedProx's MCLR)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


@register("mlp")
def mlp(
    input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (64,), dropout: float = 0.0
) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@register("cnn")
def cnn(input_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (16, 32)) -> nn.Module:
    """A small CNN sized for 8x8 digits (works on any (C, H, W) input)."""
    if len(input_shape) == 1:
        side = math.isqrt(input_shape[0])
        if side * side != input_shape[0]:
            raise ValueError(f"cnn needs (C, H, W) input or a square flat input, got {input_shape}")
        shape: tuple[int, ...] = (1, side, side)
        pre: list[nn.Module] = [nn.Unflatten(1, shape)]
    else:
        shape, pre = tuple(input_shape), []
    c_in, h, w = shape
    c1, c2 = channels
    return nn.Sequential(
        *pre,
        nn.Conv2d(c_in, c1, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * (h // 2) * (w // 2), num_classes),
    )


def resolve_callable(path: str, what: str) -> Callable[..., Any]:
    """The function at ``package.module:attr``. The current directory is importable (it is put
    on ``sys.path`` when missing), and a failing import shows the real error."""
    mod, sep, attr = path.partition(":")
    if not sep or not mod or not attr:
        raise ValueError(f"{what} {path!r} must be 'package.module:function'")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(mod)
    except Exception as e:  # the user's module may raise anything while importing
        raise ValueError(f"cannot import {what} {path!r}: {type(e).__name__}: {e}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"cannot import {what} {path!r}: module {mod!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"{what} {path!r} is not callable")
    return fn


def _resolve(name: str) -> ModelFactory:
    if name in MODELS:
        return MODELS[name]
    if ":" in name:
        return resolve_callable(name, "model factory")
    raise ValueError(
        f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}, or 'package.module:function'"
    )


def build_model(spec: Mapping[str, Any], input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Build the module a spec describes; ``spec['name']`` is a registry name or import path."""
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    module = _resolve(str(spec["name"]))(tuple(input_shape), int(num_classes), **kwargs)
    if not isinstance(module, nn.Module):
        raise TypeError(f"model factory {spec['name']!r} returned {type(module).__name__}, not nn.Module")
    return module


def init_model(
    spec: Mapping[str, Any], input_shape: Sequence[int], num_classes: int, seed: int
) -> nn.Module:
    """Build with a seeded initialisation that leaves torch's global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(spec, input_shape, num_classes)
