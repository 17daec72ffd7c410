"""Reference models by name, plus any ``module:function`` factory a user points to.

Import paths resolve through :meth:`fedkit.registry.Registry.lookup`: the current directory is
importable, and a module that fails to import reports its real error.

A factory is ``fn(input_shape, num_classes, **kwargs) -> nn.Module``. Models are described by a
JSON-able spec (``{"name": ..., **kwargs}``) so a server can tell a device what to build. A spec
with ``checkpoint: DIR`` builds the architecture that folder records and loads its weights
(fedkit/models/checkpoint.py; ``reinit: [head]`` keeps named modules freshly initialised); the
folder must be readable wherever the model is built.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fedkit.registry import Registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model", entry="model factory")


@MODELS.register("logreg")
def logreg(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Multinomial logistic regression (FedProx's MCLR)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


@MODELS.register("mlp")
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


@MODELS.register("cnn")
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


class BagOfTokens(nn.Module):
    """Mean of token embeddings (pad excluded) -> linear classifier, over token-id inputs.

    Ids arrive as float32 (the engine's input dtype; exact for ids < 2**24) and are hashed into
    ``buckets`` rows (id mod buckets), so any tokenizer works; ``buckets >= vocab_size`` means no
    collisions. A text with only padding embeds to zeros.
    """

    def __init__(self, num_classes: int, buckets: int, dim: int, pad_id: int) -> None:
        super().__init__()
        self.buckets, self.pad = buckets, pad_id % buckets
        self.embed = nn.EmbeddingBag(buckets, dim, mode="mean", padding_idx=self.pad)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x.long().remainder(self.buckets)))


@MODELS.register("bow")
def bow(
    input_shape: Sequence[int], num_classes: int, buckets: int = 4096, dim: int = 32, pad_id: int = 0
) -> nn.Module:
    """A bag-of-tokens text classifier (fedkit/data/text.py inputs): the data path without PEFT."""
    if len(input_shape) != 1:
        raise ValueError(f"bow needs token-id inputs of shape (max_length,), got {tuple(input_shape)}")
    if buckets < 2 or dim < 1:
        raise ValueError(f"bow needs buckets >= 2 and dim >= 1, got {buckets} and {dim}")
    return BagOfTokens(num_classes, buckets, dim, pad_id)


def build_model(spec: Mapping[str, Any], input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Build the module a spec describes; ``spec['name']`` is a registry name or import path."""
    from fedkit.models.checkpoint import LOADING, load_weights, resolve_spec

    arch = resolve_spec(spec)
    kwargs = {k: v for k, v in arch.items() if k not in ("name", *LOADING)}
    module = MODELS.lookup(str(spec["name"]))(tuple(input_shape), int(num_classes), **kwargs)
    if not isinstance(module, nn.Module):
        raise TypeError(f"model factory {spec['name']!r} returned {type(module).__name__}, not nn.Module")
    if "checkpoint" in spec:
        load_weights(module, spec, input_shape, num_classes)
    return module


SEEDED = threading.RLock()
"""Held while torch's global generator is seeded for a build: clients served by one process build
their models in their own threads, and an unguarded seed is another thread's draw (a device's
base then differs from the server's)."""


def init_model(
    spec: Mapping[str, Any], input_shape: Sequence[int], num_classes: int, seed: int
) -> nn.Module:
    """Build with a seeded initialisation that leaves torch's global RNG untouched (tensors a
    checkpoint holds are then overwritten by it; the rest, e.g. new prompts, keep the draw)."""
    with SEEDED, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(spec, input_shape, num_classes)
