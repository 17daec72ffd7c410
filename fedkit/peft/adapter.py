"""Bottleneck adapters (Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML
2019), the ``adapter`` member of FedPEFT's family (bias, adapter, prompt; REFERENCES.md E6).

After each target module, a small residual block ``h + up(act(down(h)))`` with ``down``: d ->
``dim`` and ``up``: ``dim`` -> d. ``up`` starts at zero (weight and bias), so the adapted model
equals the pre-trained one before the first step; ``down``'s init is seeded, the same in every
process. Only the adapters (and ``train_also`` modules) train and travel.

Why not HF ``peft``: version 0.21 has no Houlsby-style bottleneck adapter (its adapter-like
methods are LoRA relatives, IA3, LLaMA-Adapter's adaption prompts and ShadowPEFT's decoder-only
shadow network), so this is a small hand-written one. Each adapter is a submodule named
``adapter`` of its target, applied by a forward hook: the base's own parameter names are
untouched, so the base checkpoint loads into the adapted model as it is, and the exchanged
names read ``<target>.adapter.down.weight`` etc.

A non-linear adapter cannot be folded into the base weights (there is no merged model);
``fedkit export --adapter DIR`` writes ``adapter_config.json`` + ``adapter_model.safetensors``
and :func:`load_adapter` puts them onto a freshly loaded base.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

NAME = "adapter"  # the submodule each target gets
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


class Bottleneck(nn.Module):
    """down -> act -> up, added to its input (the target's output); up starts at zero."""

    def __init__(self, d: int, dim: int, activation: str = "gelu") -> None:
        super().__init__()
        self.down = nn.Linear(d, dim)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(dim, d)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))

    def hook(self, module: nn.Module, args: Any, out: Any) -> Any:
        """A forward hook on the target: its output (or a tuple's first tensor) adapted."""
        if isinstance(out, torch.Tensor):
            return self(out)
        if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
            return (self(out[0]), *out[1:])
        raise TypeError(f"adapter: the target's output is a {type(out).__name__}, not a tensor")


def out_features(module: nn.Module) -> int | None:
    """The width of a module's output, where its type tells it (Linear, transformers' Conv1D,
    LayerNorm, Embedding); None otherwise."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1])
    if isinstance(module, nn.Embedding):
        return module.embedding_dim
    nf = getattr(module, "nf", None)  # transformers.pytorch_utils.Conv1D (GPT-2)
    return int(nf) if type(module).__name__ == "Conv1D" and nf is not None else None


def add_adapters(model: nn.Module, targets: Sequence[str], dim: int, activation: str, seed: int) -> list[str]:
    """Put a :class:`Bottleneck` after every module ``targets`` selects (peft's matching: the
    name or a name ending in ``.target``); returns the adapted modules' names. Seeded init."""
    from fedkit.peft.model import check_targets, matches, module_names

    if activation not in ACTIVATIONS:
        raise ValueError(f"peft.adapter.activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
    check_targets(model, targets, "peft.adapter.targets", None)
    names = module_names(model)
    picked = sorted({n for t in targets for n in matches(names, t)}, key=names.index)
    modules = dict(model.named_modules())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for n in picked:
            target = modules[n]
            d = out_features(target)
            if d is None:
                raise ValueError(f"peft.adapter.targets: {n} is a {type(target).__name__}, whose output width "
                                 "is unknown; target Linear, Conv1D, LayerNorm or Embedding modules")
            if hasattr(target, NAME):
                raise ValueError(f"peft.adapter.targets: {n} already has an attribute {NAME!r}")
            block = Bottleneck(d, dim, activation)
            target.add_module(NAME, block)
            target.register_forward_hook(block.hook)
    return picked


def is_adapter(name: str) -> bool:
    """Whether a parameter name belongs to a bottleneck adapter."""
    return f".{NAME}.down." in f".{name}" or f".{NAME}.up." in f".{name}"


def save_adapter(out: str | Path, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> Path:
    """``adapter_config.json`` (the peft section, the base folder) + the tensors as safetensors."""
    from safetensors.torch import save_file

    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path / WEIGHTS))
    return path


def load_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """``model`` (the base, e.g. ``AutoModelFor...from_pretrained``) with the folder's adapters
    added and its tensors (adapters, ``train_also`` modules) loaded; in place, returned."""
    from safetensors.torch import load_file

    path = Path(folder)
    if not (path / CONFIG).exists():
        raise FileNotFoundError(f"{path}: no {CONFIG} (not a fedkit adapter folder)")
    cfg = json.loads((path / CONFIG).read_text())
    spec = cfg["adapter"]
    add_adapters(model, spec["targets"], int(spec["dim"]), spec.get("activation", "gelu"), 0)
    tensors = load_file(str(path / WEIGHTS))
    own = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise ValueError(f"{path}: tensors the model lacks: {unknown[:5]}")
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v)
    return model
