"""Pre-trained models from a local transformers folder: loading, the call fedkit's loops make,
and the content hash of the folder's weights.

Nothing here downloads: ``from_pretrained`` runs with ``local_files_only=True`` on a folder the
user already has (or a tiny model a test wrote with ``save_pretrained``). Inputs arrive as
fedkit's float32 sample arrays. One entry of :data:`TASKS` per ``model.task``, saying which
``AutoModelFor...`` loads the folder and how fedkit's loops call it:

- ``sequence-classification``: token ids (exact below 2**24) -> (B, C) logits; the attention
  mask is computed from the model's pad id, so padded token ids are all a client needs.
- ``causal-lm``: token ids -> (B, T, V) next-token logits, fedkit's causal-LM path
  (fedkit/models/train.py: the loss of (B, T) targets, perplexity in evaluation). The blocks of
  ``text_lm`` / ``docstrings_lm`` are unpadded, so no mask is passed (the pad id of a GPT-2 style
  tokenizer is often its eos, a real token inside a stream).
- ``image-classification``: pixels (B, C*H*W) or (B, C, H, W) reshaped to the config's
  ``num_channels`` x ``image_size`` x ``image_size`` -> (B, C) logits (e.g. a ViT on digits).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

INSTALL = "pip install 'fedkit[llm]'  (transformers, peft, safetensors)"
TASKS = ("sequence-classification", "causal-lm", "image-classification")
_AUTO = {"sequence-classification": "AutoModelForSequenceClassification",
         "causal-lm": "AutoModelForCausalLM", "image-classification": "AutoModelForImageClassification"}
LABELLED = ("sequence-classification", "image-classification")  # tasks with a num_labels head


def require(*modules: str) -> None:
    """Raise a ValueError naming the install command when an optional library is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"fine-tuning pre-trained models needs {', '.join(missing)}: {INSTALL}")


def check_folder(folder: str | Path) -> Path:
    """The folder, if it looks like a transformers checkpoint (config.json and weights)."""
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"model.hf: no folder {str(folder)!r} (a local transformers checkpoint; nothing is downloaded)")
    if not (path / "config.json").exists():
        raise ValueError(f"model.hf: {path} has no config.json (not a transformers checkpoint?)")
    if not weight_files(path):
        raise ValueError(f"model.hf: {path} has no weights (*.safetensors or pytorch_model*.bin)")
    return path


def weight_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))


_FOLDER_HASH: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


def folder_sha256(folder: str | Path) -> str:
    """A content hash of a checkpoint folder's weight tensors (names, dtypes, shapes, bytes in
    name order), not of the files: re-saving the same weights gives the same hash. Cached per
    process by the files' (name, size, mtime)."""
    path = check_folder(folder)
    files = weight_files(path)
    key = (str(path.resolve()), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key in _FOLDER_HASH:
        return _FOLDER_HASH[key]
    h = hashlib.sha256()

    def add(name: str, t: torch.Tensor) -> None:
        t = t.detach().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")

    if files[0].suffix == ".safetensors":  # one tensor at a time: no second copy of the model
        from safetensors import safe_open

        handles = [safe_open(str(f), framework="pt") for f in files]
        where = {k: g for g in handles for k in g.keys()}  # noqa: SIM118 (safe_open has no iteration)
        for name in sorted(where):
            add(name, where[name].get_tensor(name))
    else:
        tensors: dict[str, torch.Tensor] = {}
        for f in files:
            tensors |= torch.load(f, map_location="cpu", weights_only=True)
        for name in sorted(tensors):
            add(name, tensors[name])
    _FOLDER_HASH[key] = h.hexdigest()
    return _FOLDER_HASH[key]


def _auto(task: str) -> Any:
    import transformers

    if task not in _AUTO:
        raise ValueError(f"model.task {task!r} is not supported; known: {', '.join(TASKS)}")
    return getattr(transformers, _AUTO[task])


def load_hf(folder: str | Path, task: str, num_labels: int, seed: int) -> nn.Module:
    """The folder's model for ``task``, with ``num_labels`` outputs (a classification task;
    a causal LM keeps its vocabulary). Weights the checkpoint lacks (a new classification head)
    are initialised from ``seed``, so every process that loads the folder builds the same model."""
    require("transformers")
    path = check_folder(folder)
    auto = _auto(task)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            from transformers.utils import logging as hf_logging

            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # "newly initialised head" is expected here
            hf_logging.disable_progress_bar()
            try:
                labels = {"num_labels": num_labels} if task in LABELLED else {}
                model = auto.from_pretrained(str(path), local_files_only=True, **labels)
            finally:
                hf_logging.set_verbosity(verbosity)
        except (ValueError, OSError, KeyError) as e:
            raise ValueError(f"model.hf: {path} cannot be loaded for {task}: {str(e).splitlines()[0][:300]}") from None
    return model.eval()


def check_config(folder: str | Path, task: str) -> None:
    """Refuse a folder whose config the task cannot use, without loading weights."""
    require("transformers")
    import transformers

    path = check_folder(folder)
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (ValueError, OSError) as e:
        raise ValueError(f"model.hf: {path}/config.json: {str(e).splitlines()[0][:300]}") from None
    auto = _auto(task)
    if type(config) not in auto._model_mapping:
        raise ValueError(
            f"model.hf: {path} is a {type(config).__name__} ({getattr(config, 'model_type', '?')}), "
            f"which has no {task} model in transformers"
        )


def hf_call(model: nn.Module, task: str = "sequence-classification") -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """How fedkit's loops call the model of ``task``: fedkit's inputs in, logits out."""
    if task == "causal-lm":
        return lambda m, x: m(input_ids=x.long()).logits
    if task == "image-classification":
        c, h, w = image_shape(model)
        return lambda m, x: m(pixel_values=x.float().reshape(len(x), c, h, w)).logits
    pad = getattr(model.config, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)

    def call(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()
        out = m(input_ids=ids, attention_mask=(ids != pad).long())
        return out.logits

    return call


def image_shape(model: nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) an image classifier's config expects."""
    c = int(getattr(model.config, "num_channels", 3))
    size = getattr(model.config, "image_size", 224)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return c, h, w


def check_inputs(model: nn.Module, task: str, input_shape: Sequence[int], num_classes: int) -> None:
    """Refuse data the task's model cannot take: images of another size, token ids outside a
    causal LM's vocabulary (``num_classes`` is the data's vocabulary there)."""
    if task == "image-classification":
        c, h, w = image_shape(model)
        if math.prod(input_shape) != c * h * w:
            raise ValueError(f"model.task image-classification: the model takes {c}x{h}x{w} images "
                             f"({c * h * w} values), the data has {'x'.join(map(str, input_shape))} per sample")
    vocab = getattr(model.config, "vocab_size", None)
    if task == "causal-lm" and vocab is not None and num_classes > int(vocab):
        raise ValueError(f"model.hf: the data's vocabulary has {num_classes} token ids but the causal LM has "
                         f"{vocab}; tokenise with the model folder's tokenizer (data.dataset.tokenizer: <model folder>)")
