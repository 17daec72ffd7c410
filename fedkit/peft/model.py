"""The module the engine trains when only adapters travel: a wrapper whose ``state_dict()``
holds the trainable tensors and nothing else.

Every seam of fedkit reads and writes a model through ``state_dict()`` / ``parameters()``
(fedkit/models/params.py, the training loop, codecs, error feedback, byte accounting, DP
clipping). :class:`Trainable` answers those with the adapters (LoRA factors), the ``train_also``
modules and, without a ``peft:`` section, every parameter of a pre-trained model (full
fine-tuning). The frozen base lives outside the wrapper's registered state, so it never enters
Params and never crosses the wire.

Names follow peft's ``get_peft_model_state_dict`` convention (``...query.lora_A.weight``,
``...classifier.weight``): a LoRA pair is found by its common prefix, and the names are those
of the adapter folder ``fedkit export --adapter`` writes.

One base per process and thread: :func:`build` caches the wrapped model by the content hash
of the base weights (folder models) or the base's spec and seed (fedkit's own models), plus the
PEFT configuration. Every simulated client then shares one frozen base and differs only in the
adapter values ``set_params`` loads before each task (client state is adapters and optimizer
state, as values). A cache hit resets the trainable tensors to their initial values, so the
server's initial parameters never depend on what ran before in the process. Threads get their
own copy: several device clients served by one process train concurrently.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fedkit.models.params import named_by
from fedkit.types import Params

FACTORY = "fedkit.peft.model:build"
"""The model spec name a PEFT / pre-trained scenario's clients build (fedkit.models.build_model)."""

Call = Callable[[nn.Module, torch.Tensor], torch.Tensor]
EVAL_CHUNK = 256  # samples per forward pass without gradients


def _plain_call(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x)


class Trainable(nn.Module):
    """``inner``'s trainable tensors as the whole registered state; ``forward`` calls ``inner``.

    ``inner`` (the peft-wrapped or full model) is kept outside torch's registry of submodules,
    so ``state_dict``, ``parameters`` and ``named_parameters`` see only ``tensors``."""

    inner: nn.Module

    def __init__(self, inner: nn.Module, tensors: Sequence[tuple[str, nn.Parameter]], call: Call,
                 base_sha256: str, total_params: int) -> None:
        super().__init__()
        object.__setattr__(self, "inner", inner)  # not a submodule: frozen base stays out of state
        self._tensors = list(tensors)
        self._call = call
        self.base_sha256 = base_sha256
        self.total_params = total_params
        self.base_kind: str | None = None  # how the downlink changes the frozen base (fold_base)
        self._w0: dict[str, torch.Tensor] = {}  # the frozen weights as built, of modules folded into

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for _, p in self._tensors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or len(x) <= EVAL_CHUNK:
            return self._call(self.inner, x)
        # evaluation hands over whole test sets; a transformer's attention over thousands of
        # sequences at once would hold gigabytes, so it sees them in chunks (same outputs)
        return torch.cat([self._call(self.inner, c) for c in x.split(EVAL_CHUNK)])

    def _apply(self, fn: Any, recurse: bool = True) -> Trainable:  # type: ignore[override]
        """``.to(device)`` etc. reach the model (the trainable tensors are its parameters and
        stay the same objects: torch converts parameters in place)."""
        self.inner._apply(fn, recurse)
        return self

    def train(self, mode: bool = True) -> Trainable:
        self.training = mode
        self.inner.train(mode)
        return self

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "",  # type: ignore[override]
                   keep_vars: bool = False) -> OrderedDict[str, torch.Tensor]:
        out: OrderedDict[str, torch.Tensor] = OrderedDict() if destination is None else destination
        for name, p in self._tensors:
            out[prefix + name] = p if keep_vars else p.detach()
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,  # type: ignore[override]
                        assign: bool = False) -> Any:
        own = dict(self._tensors)
        unknown = [k for k in state_dict if k not in own]
        missing = [k for k in own if k not in state_dict]
        if strict and (unknown or missing):
            raise ValueError(f"adapter state: unknown tensors {unknown[:5]}, missing {missing[:5]}")
        with torch.no_grad():
            for k, v in state_dict.items():
                if k in own:
                    own[k].copy_(torch.as_tensor(v))
        return None

    def named_parameters(self, prefix: str = "", recurse: bool = True,  # type: ignore[override]
                         remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Parameter]]:
        for name, p in self._tensors:
            yield prefix + name, p

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        for _, p in self._tensors:
            yield p


def adapter_name(name: str, adapter: str = "default") -> str:
    """peft's parameter name -> its ``get_peft_model_state_dict`` name."""
    return name.replace(f".modules_to_save.{adapter}.", ".").replace(f".{adapter}.", ".")


def lora_pairs(names: Sequence[str]) -> list[tuple[int, int]]:
    """Indices (A, B) of each LoRA pair among the Params' names, found by their common prefix.

    >>> lora_pairs(["m.q.lora_A.weight", "m.q.lora_B.weight", "m.head.weight"])
    [(0, 1)]
    """
    index = {n: i for i, n in enumerate(names)}
    out = []
    for n, i in index.items():
        if ".lora_A." in n:
            b = n.replace(".lora_A.", ".lora_B.")
            if b not in index:
                raise ValueError(f"LoRA factor {n} has no matching {b}")
            out.append((i, index[b]))
    return out


def linear_kinds() -> tuple[type[nn.Module], ...]:
    """The module types LoRA adapts: nn.Linear, and transformers' Conv1D (GPT-2's projections,
    a Linear with its weight transposed) where transformers is installed."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return (nn.Linear,)
    return (nn.Linear, Conv1D)


def module_names(model: nn.Module, kind: type[nn.Module] | tuple[type[nn.Module], ...] | None = None) -> list[str]:
    """Dotted names of ``model``'s submodules (of ``kind``, e.g. nn.Linear)."""
    return [n for n, m in model.named_modules() if n and (kind is None or isinstance(m, kind))]


def matches(names: Sequence[str], target: str) -> list[str]:
    """Module names a peft target selects: the name itself or any name ending in ``.target``."""
    return [n for n in names if n == target or n.endswith("." + target)]


def check_targets(model: nn.Module, targets: Sequence[str], what: str,
                  kind: type[nn.Module] | tuple[type[nn.Module], ...] | None) -> None:
    """Every target names at least one module; else a ValueError listing the candidates."""
    from fedkit.registry import did_you_mean

    names = module_names(model, kind)
    short = sorted({n.rsplit(".", 1)[-1] for n in names})
    for t in targets:
        if not matches(names, t):
            noun = "module" if kind is None else "Linear module"
            raise ValueError(
                f"{what}: {t!r} names no {noun} of the model{did_you_mean(t, short + names)}; "
                f"its {noun} names: {', '.join(short)}"
            )


def state_sha256(module: nn.Module) -> str:
    """A content hash of a module's state (names, dtypes, shapes, bytes in state order)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def _base(input_shape: Sequence[int], num_classes: int, base: Mapping[str, Any], seed: int) -> tuple[nn.Module, Call, str]:
    """The frozen base, how to call it, and its content hash."""
    if "hf" in base:
        from fedkit.peft.hf import check_inputs, folder_sha256, hf_call, load_hf

        task = str(base.get("task", "sequence-classification"))
        model = load_hf(base["hf"], task, int(base.get("num_labels") or num_classes), seed)
        check_inputs(model, task, input_shape, num_classes)
        return model, hf_call(model, task), folder_sha256(base["hf"])
    from fedkit.models import init_model

    model = init_model(base, input_shape, num_classes, seed)
    return model, _plain_call, state_sha256(model)


def _train_only(model: nn.Module, picked: Callable[[str], bool], train_also: Sequence[str]) -> list[tuple[str, nn.Parameter]]:
    """Freeze every parameter but the picked ones and those of the ``train_also`` modules (with
    everything inside them: ``blocks.3`` trains the whole block)."""
    out = []
    for name, p in model.named_parameters():
        parts = name.split(".")[:-1]
        owners = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]  # the module and its parents
        trains = picked(name) or any(matches(owners, t) for t in train_also)
        p.requires_grad_(trains)
        if trains:
            out.append((name, p))
    return out


def wrap(model: nn.Module, peft: Mapping[str, Any] | None, seed: int) -> tuple[nn.Module, list[tuple[str, nn.Parameter]]]:
    """``model`` with the PEFT method applied and its trainable tensors by exchange name;
    ``peft=None``: full fine-tuning (every parameter trains)."""
    if peft is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return model, list(model.named_parameters())
    method = peft.get("method", "lora")
    train_also = list(peft.get("train_also") or [])
    if train_also:
        check_targets(model, train_also, "peft.train_also", None)
    if method == "bias":  # BitFit: biases (and train_also modules) only, no library needed
        return model, _train_only(model, lambda name: name.endswith("bias"), train_also)
    if method == "prompt":  # prompt tuning (VPT): the model's prompt tokens and train_also only
        from fedkit.models.tiny_transformers import prompt_names

        prompts = set(prompt_names(model))
        if not prompts:
            raise ValueError("peft.method prompt: the model has no prompt tokens; give it some "
                             "(e.g. model: {name: vit_tiny, prompt_tokens: 8})")
        return model, _train_only(model, prompts.__contains__, train_also)
    if method == "adapter":  # Houlsby bottleneck adapters after the targets (fedkit/peft/adapter.py)
        from fedkit.peft.adapter import add_adapters, is_adapter

        spec = dict(peft.get("adapter") or {})
        add_adapters(model, list(spec.get("targets") or []), int(spec.get("dim", 16)),
                     str(spec.get("activation", "gelu")), seed)
        return model, _train_only(model, is_adapter, train_also)
    if method != "lora":
        raise ValueError(f"peft.method {method!r} is not supported; known: lora, bias, prompt, adapter")
    from fedkit.peft.hf import require

    require("peft")
    import peft as hf_peft

    lora = dict(peft.get("lora") or {})
    targets = list(lora.get("targets") or [])
    kinds = linear_kinds()
    check_targets(model, targets, "peft.lora.targets", kinds)
    modules = dict(model.named_modules())
    conv1d = any(not isinstance(modules[n], nn.Linear) for t in targets for n in matches(module_names(model, kinds), t))
    cfg = hf_peft.LoraConfig(
        r=int(lora.get("r", 8)), lora_alpha=int(lora.get("alpha", 16)), lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=targets, modules_to_save=train_also or None,
        fan_in_fan_out=conv1d,  # GPT-2's Conv1D stores its weight transposed
    )
    from fedkit.models.registry import SEEDED

    with SEEDED, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # LoRA A's random init: the same in every process (and thread)
        pm = hf_peft.get_peft_model(model, cfg)
    tensors = [(adapter_name(n), p) for n, p in pm.named_parameters() if p.requires_grad]
    for i in named_by([n for n, _ in tensors], peft.get("frozen") or ()):
        tensors[i][1].requires_grad_(False)  # frozen factors (ffa, fedsvd: lora_A) travel but never train
    return pm, tensors


_LOCAL = threading.local()


def _cache() -> dict[str, tuple[Trainable, list[torch.Tensor]]]:
    if not hasattr(_LOCAL, "models"):
        _LOCAL.models = {}
    return _LOCAL.models  # type: ignore[no-any-return]


def build(input_shape: Sequence[int], num_classes: int, base: Mapping[str, Any],
          peft: Mapping[str, Any] | None = None, seed: int = 0, base_sha256: str | None = None,
          cache: bool = True) -> Trainable:
    """The model factory of PEFT scenarios (spec ``{"name": FACTORY, "base": ..., "peft": ...,
    "seed": ..., "base_sha256": ...}``). ``base_sha256``: the hash the server's base has; a
    different local base is refused (the task fails with both hashes)."""
    if "hf" in base:
        from fedkit.peft.hf import folder_sha256

        base_key = folder_sha256(base["hf"])
        if base_sha256 is not None and base_key != base_sha256:
            raise ValueError(base_mismatch(base_sha256, base_key))
    else:
        base_key = json.dumps([dict(base), list(input_shape), num_classes], sort_keys=True)
    key = json.dumps([base_key, dict(peft or {}), seed, dict(base), list(input_shape), num_classes],
                     sort_keys=True, default=str)
    hit = _cache().get(key) if cache else None
    if hit is not None:
        module, initial = hit
        with torch.no_grad():
            for (_, p), v in zip(module._tensors, initial, strict=True):
                p.copy_(v)
            for prefix, w0 in module._w0.items():  # and the base as built (fold_base may have moved it)
                _base_weight(module, prefix).copy_(w0)
        return module
    model, call, digest = _base(input_shape, num_classes, base, seed)
    if base_sha256 is not None and digest != base_sha256:
        raise ValueError(base_mismatch(base_sha256, digest))
    total = sum(p.numel() for p in model.parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    inner, tensors = wrap(model, peft, seed)
    module = Trainable(inner, tensors, call, digest, total)
    module.base_kind = (peft or {}).get("base")
    module.train(False)
    if cache:
        _cache()[key] = (module, [p.detach().clone() for _, p in tensors])
    return module


def _base_weight(module: Trainable, prefix: str) -> torch.Tensor:
    layer = module.inner.get_submodule(prefix)
    weight = getattr(layer, "base_layer", layer).weight
    assert isinstance(weight, torch.Tensor)
    return weight


def fold_base(module: nn.Module, params: Params) -> Params:
    """Split a downlink into the adapter Params and the base change, folding the change into
    the frozen weights: ``W = W0 + D`` (``base: dense``, FedEx-LoRA's accumulated residual, one
    tensor per LoRA pair after the adapter's) or ``W = W0 + B A`` (``base: factors``, FLoRA's
    stacks so far, B then A per pair). W0 is the base as built, so a shared module never
    accumulates what earlier tasks folded. Other models: ``params`` unchanged."""
    kind = getattr(module, "base_kind", None)
    if not kind:
        return params
    assert isinstance(module, Trainable)
    names = [n for n, _ in module._tensors]
    n = len(names)
    pairs = lora_pairs(names)
    per = {"dense": 1, "factors": 2}[kind]
    extras = params[n:]
    if len(extras) != per * len(pairs):
        raise ValueError(f"downlink has {len(params)} arrays; a {kind} base change needs {n} adapter "
                         f"tensors and {per * len(pairs)} for the base ({per} per LoRA pair)")
    with torch.no_grad():
        for j, (ia, _) in enumerate(pairs):
            prefix = names[ia].split(".lora_A", 1)[0]
            w = _base_weight(module, prefix)
            w0 = module._w0.setdefault(prefix, w.detach().clone())
            chunk = extras[per * j: per * (j + 1)]
            d = np.asarray(chunk[0], np.float64) if per == 1 else (
                np.asarray(chunk[0], np.float64) @ np.asarray(chunk[1], np.float64))
            if d.shape != tuple(w0.shape):
                raise ValueError(f"base change of {prefix} has shape {d.shape}, the weight {tuple(w0.shape)}")
            w.copy_(torch.from_numpy(w0.double().numpy() + d).to(w0.dtype))
    return params[:n]


def unsent(names: Sequence[str], spec: Mapping[str, Any]) -> list[int]:
    """Positions of the Params a client never uploads: factors frozen on every client (ffa,
    fedsvd: lora_A; the server knows their delta is zero) and factors each client keeps
    (fedsa: lora_B). The client leaves them out of its update and the server's acceptance
    puts zeros back (fedkit/runtime/accept.py), so the uplink carries only what trains and is
    shared, as in the papers. ``names``: the model's state-dict names; ``spec``: its model spec."""
    peft = spec.get("peft") or {}
    parts = [*(peft.get("frozen") or ()), *(peft.get("personal") or ())]
    return named_by(names, parts) if parts else []


def base_mismatch(server: str, local: str) -> str:
    return (f"base model differs from the server's: server base sha256 {server}, this device's {local} "
            "(fine-tuning needs the same pre-trained weights on every device)")
