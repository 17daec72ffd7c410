"""A learned bottleneck at the cut: shrink the activation the client sends (``bottleneck: {dim: k}``).

After BottleFit (Matsubara et al., WoWMoM 2022) and supervised compression (Matsubara et al.,
"Supervised Compression for Resource-Constrained Edge Computing Systems", WACV 2022): a small
encoder at the end of the client part maps the cut activation to ``k`` channels (a 1x1 conv for
(C, H, W) activations, a linear layer for flat ones) and a decoder at the start of the server part
maps it back (the same kind of layer, then ReLU). Both train with the model end to end (no
distillation stage here), so the wire carries k/C (or k/F) of the floats: the biggest lever on
split-learning bytes, and it composes with any activation codec (e.g. ``quant(bits=8)``).

:func:`with_bottleneck` returns a new :class:`~fedkit.split.partition.SplitModel`; for U-shape it
wraps the head/body cut (the only tensor that crosses up with the data). Layer initialisation is
keyed by (seed, "bottleneck") and leaves torch's global RNG alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedkit.rng import seed_int
from fedkit.split.partition import SplitModel

__all__ = ["with_bottleneck"]


def _layers(shape: tuple[int, ...], dim: int) -> tuple[nn.Module, nn.Module]:
    if len(shape) == 3:
        c = shape[0]
        return nn.Conv2d(c, dim, 1), nn.Sequential(nn.Conv2d(dim, c, 1), nn.ReLU())
    if len(shape) == 1:
        f = shape[0]
        return nn.Linear(f, dim), nn.Sequential(nn.Linear(dim, f), nn.ReLU())
    raise ValueError(f"bottleneck needs a (C, H, W) or flat activation at the cut, got per-sample {shape}")


def with_bottleneck(sm: SplitModel, input_shape: Sequence[int], dim: int, seed: int = 0) -> SplitModel:
    """``sm`` with an encoder appended to its first part and a decoder prepended to the next."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"bottleneck dim must be a positive int, got {dim!r}")
    with torch.no_grad():
        act = sm.parts[0](torch.zeros((2, *input_shape)))
    shape = tuple(int(s) for s in act.shape[1:])
    width = shape[0]
    if dim >= width:
        raise ValueError(f"bottleneck dim {dim} does not shrink the cut: it has {width} channels/features")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_int(seed, "bottleneck"))
        enc, dec = _layers(shape, dim)
    first = nn.Sequential(sm.parts[0], enc)
    second = nn.Sequential(dec, sm.parts[1])
    return SplitModel((first, second, *sm.parts[2:]), sm.cuts)
