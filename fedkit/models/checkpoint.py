"""Checkpoint folders of fedkit's own models, laid out like ``save_pretrained``'s.

A folder holds ``config.json`` (the model spec with every architecture option spelled out, the
input shape and number of classes it was built for, and how it was trained) and
``model.safetensors`` (the state dict, via the ``safetensors`` library: no pickle, so loading a
checkpoint never runs code). ``fedkit pretrain SCENARIO`` writes one (fedkit/pretrain.py); a
scenario loads it with ``model: {name: vit_tiny, checkpoint: DIR}``.

Loading is strict about what would silently change the model: another model name, another
value of an architecture option, another input shape or class count, an unknown or mis-shaped
tensor are all :class:`CheckpointError`. Options in :data:`ADDITIVE` (prompt tuning) may differ:
they add tensors on top of the pre-trained ones, which keep their fresh initialisation. So do
the modules named in ``reinit`` (e.g. ``reinit: [head]``: a new classifier for a target task,
which may then have another number of classes): their tensors are not loaded.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["ADDITIVE", "CONFIG", "FORMAT", "WEIGHTS", "CheckpointError", "load_weights", "read_config",
           "LOADING", "resolve_spec", "save_checkpoint"]

FORMAT = "fedkit-checkpoint/1"
CONFIG, WEIGHTS = "config.json", "model.safetensors"
ADDITIVE = frozenset({"prompt_tokens", "deep_prompt"})
LOADING = ("checkpoint", "reinit")  # spec keys that say how to load, not what to build


class CheckpointError(ValueError):
    """A checkpoint folder is missing, unreadable or does not fit the scenario; one line."""


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:  # pragma: no cover - installed with torch's usual stack / fedkit[llm]
        raise CheckpointError("checkpoints need safetensors: pip install 'fedkit[llm]'") from None
    return safetensors.torch


def full_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` with the factory's defaults spelled out, so a checkpoint records its architecture
    even when a later fedkit changes a default (a spec that itself loads a checkpoint: that
    checkpoint's options, as training on from it builds them)."""
    from fedkit.models.registry import MODELS

    spec = resolve_spec(spec)

    fn = MODELS.lookup(str(spec["name"]))
    params = list(inspect.signature(fn).parameters.values())[2:]
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty
                and p.kind is not p.VAR_KEYWORD}
    return {"name": spec["name"], **defaults, **{k: v for k, v in spec.items() if k not in ("name", *LOADING)}}


def save_checkpoint(
    module: nn.Module,
    spec: Mapping[str, Any],
    input_shape: Sequence[int],
    num_classes: int,
    path: str | Path,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``module``'s weights and its spec to folder ``path`` (created); returns it."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    _safetensors().save_file(state, str(out / WEIGHTS), metadata={"format": FORMAT})
    config = {"format": FORMAT, "model": full_spec(spec), "input_shape": [int(s) for s in input_shape],
              "num_classes": int(num_classes), **({"trained": dict(info)} if info else {})}
    (out / CONFIG).write_text(json.dumps(config, indent=1) + "\n")
    return out


def read_config(path: str | Path) -> dict[str, Any]:
    """A checkpoint folder's ``config.json``, checked (the weights file must exist too)."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"no checkpoint folder {str(p)!r} (write one with: fedkit pretrain SCENARIO)")
    for name in (CONFIG, WEIGHTS):
        if not (p / name).is_file():
            raise CheckpointError(f"{p}: not a fedkit checkpoint folder (no {name})")
    try:
        config = json.loads((p / CONFIG).read_text())
    except ValueError as e:
        raise CheckpointError(f"{p / CONFIG}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{p / CONFIG}: not a {FORMAT} config (format, model, input_shape, num_classes)")
    return config


def resolve_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture a spec builds: with ``checkpoint``, the checkpoint's options under the
    spec's own (which must agree, except the :data:`ADDITIVE` ones); without, ``spec`` itself."""
    if "checkpoint" not in spec:
        return dict(spec)
    where = str(spec["checkpoint"])
    saved = read_config(where)["model"]
    if saved.get("name") != spec["name"]:
        raise CheckpointError(f"checkpoint {where!r} holds model {saved.get('name')!r}, not {spec['name']!r}")
    for key, value in spec.items():
        if key in ("name", *LOADING) or key in ADDITIVE or key not in saved:
            continue
        if _canon(value) != _canon(saved[key]):
            raise CheckpointError(f"model.{key}={value!r} but checkpoint {where!r} was trained with "
                                  f"{key}={saved[key]!r}; drop it or use the same value")
    return {**saved, **spec}


def _canon(v: Any) -> Any:
    return json.loads(json.dumps(v))  # tuples and lists, ints and floats as JSON compares them


def _reinit(spec: Mapping[str, Any]) -> list[str]:
    names = spec.get("reinit") or []
    if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
        raise CheckpointError(f"model.reinit must be a list of module names, e.g. [head], got {names!r}")
    return list(names)


def load_weights(module: nn.Module, spec: Mapping[str, Any], input_shape: Sequence[int], num_classes: int) -> None:
    """Load ``spec['checkpoint']``'s tensors into ``module`` (built from :func:`resolve_spec`),
    except those of the modules in ``spec['reinit']``."""
    from fedkit.registry import did_you_mean

    where = str(spec["checkpoint"])
    config = read_config(where)
    fresh = _reinit(spec)
    own = module.state_dict()
    modules = [n for n, _ in module.named_modules() if n]
    for name in fresh:
        if not any(k == name or k.startswith(name + ".") for k in own):
            raise CheckpointError(f"model.reinit: no module {name!r} in the model{did_you_mean(name, modules)}")
    if list(config.get("input_shape", [])) != [int(s) for s in input_shape]:
        raise CheckpointError(f"checkpoint {where!r} was trained on inputs of shape {tuple(config.get('input_shape', []))}, "
                              f"the scenario's data has {tuple(input_shape)}")
    if config.get("num_classes") != int(num_classes) and not fresh:
        raise CheckpointError(f"checkpoint {where!r} has {config.get('num_classes')} classes (outputs), "
                              f"the scenario's data has {num_classes} (reinit: [head] starts a new head)")
    try:
        saved = _safetensors().load_file(str(Path(where) / WEIGHTS))
    except Exception as e:  # a truncated or foreign file: safetensors raises its own errors
        raise CheckpointError(f"{Path(where) / WEIGHTS}: cannot read ({e})") from None
    saved = {k: t for k, t in saved.items() if not any(k == n or k.startswith(n + ".") for n in fresh)}
    unknown = sorted(set(saved) - set(own))
    if unknown:
        raise CheckpointError(f"checkpoint {where!r} has tensors the model lacks: {', '.join(unknown[:5])}")
    for name, t in saved.items():
        if tuple(t.shape) != tuple(own[name].shape):
            raise CheckpointError(f"checkpoint {where!r}: tensor {name!r} has shape {tuple(t.shape)}, "
                                  f"the model's is {tuple(own[name].shape)}")
    with torch.no_grad():
        for name, t in saved.items():
            own[name].copy_(t)
