"""A fine-tuned run in the ecosystem's formats, and back.

``fedkit export RUN --adapter DIR`` writes what ``peft.PeftModel.from_pretrained(base, DIR)``
loads (adapter_config.json + adapter_model.safetensors, peft's own writer); ``--merged DIR`` a
folder ``transformers`` loads on its own (the adapters folded into the base weights, plus the
base folder's tokenizer files; bottleneck adapters have no merged form, their ``--adapter`` folder is
fedkit's own, :mod:`fedkit.peft.adapter`). :func:`load_model` returns the fine-tuned model of a run
directory: its final params, or its last checkpoint's, or those of round ``round`` (a PEFT run
keeps every round's adapters under ``adapters/``: they are small).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fedkit.models import set_params
from fedkit.peft.model import FACTORY, Trainable, build
from fedkit.report.run_dir import load_params, save_params
from fedkit.runtime.task import ModelRef
from fedkit.types import Params

ROUNDS_DIR = "adapters"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                   "merges.txt", "vocab.json", "spiece.model", "tokenizer.model")


def save_round(run_dir: str | Path, rnd: int, params: Params) -> None:
    """Round ``rnd``'s trainable tensors as ``adapters/round-NNNN.npz`` (fedkit's params format)."""
    path = Path(run_dir) / ROUNDS_DIR
    path.mkdir(exist_ok=True)
    save_params(path / f"round-{rnd:04d}.npz", params)


def clear_rounds(run_dir: str | Path) -> None:
    """Drop the per-round adapters a replaced run left behind."""
    shutil.rmtree(Path(run_dir) / ROUNDS_DIR, ignore_errors=True)


def model_ref(run_dir: str | Path) -> ModelRef:
    path = Path(run_dir)
    if not (path / "model.json").exists():
        raise FileNotFoundError(f"{path}: no model.json (not a fedkit run directory?)")
    return ModelRef.model_validate(json.loads((path / "model.json").read_text()))


def is_peft(ref: ModelRef) -> bool:
    return ref.spec.get("name") == FACTORY


def run_params(run_dir: str | Path, rnd: int | None = None) -> Params:
    """The run's final params (else its last checkpoint's), or round ``rnd``'s adapters."""
    path = Path(run_dir)
    if rnd is not None:
        source = path / ROUNDS_DIR / f"round-{rnd:04d}.npz"
        if not source.exists():
            kept = sorted(p.stem for p in (path / ROUNDS_DIR).glob("round-*.npz"))
            raise FileNotFoundError(f"{source}: no adapters of round {rnd} (kept: {', '.join(kept) or 'none'})")
    else:
        source = path / "params.npz" if (path / "params.npz").exists() else path / "checkpoint.npz"
        if not source.exists():
            raise FileNotFoundError(f"{path}: neither params.npz nor checkpoint.npz")
    return load_params(source)[0]


def load_model(run_dir: str | Path, rnd: int | None = None) -> Trainable:
    """The fine-tuned model of a PEFT run (a fresh module, not the process's shared one);
    ``.inner`` is the peft (or transformers) model itself."""
    ref = model_ref(run_dir)
    if not is_peft(ref):
        raise ValueError(f"{run_dir}: not a fine-tuning run (model {ref.spec.get('name')!r})")
    spec = ref.spec
    module = build(ref.input_shape, ref.num_classes, spec["base"], spec.get("peft"), int(spec.get("seed", 0)),
                   spec.get("base_sha256"), cache=False)
    set_params(module, run_params(run_dir, rnd))
    return module.train(False)


def _base_folder(ref: ModelRef) -> Path:
    base = ref.spec["base"]
    if "hf" not in base:
        raise ValueError("a merged transformers folder needs a model: {hf: DIR} base; "
                         f"this run fine-tuned fedkit's own {base.get('name')!r}")
    return Path(base["hf"])


def export_adapter(run_dir: str | Path, out: str | Path, rnd: int | None = None) -> Path:
    """A peft adapter folder (``PeftModel.from_pretrained(base, out)`` loads it)."""
    import peft

    model = load_model(run_dir, rnd)
    spec = model_ref(run_dir).spec
    if (spec.get("peft") or {}).get("method") == "adapter":  # fedkit's own bottleneck adapters
        from fedkit.peft.adapter import save_adapter

        return save_adapter(out, model.state_dict(), {
            "method": "adapter", "adapter": spec["peft"]["adapter"],
            "train_also": spec["peft"].get("train_also") or [], "base": spec["base"],
            "base_sha256": model.base_sha256, "load_with": "fedkit.peft.adapter.load_adapter(base_model, DIR)",
        })
    if not isinstance(model.inner, peft.PeftModel):
        raise ValueError(f"{run_dir}: no peft adapters to export (full or bias fine-tuning); use --merged")
    out = Path(out)
    model.inner.save_pretrained(str(out))
    return out


def export_merged(run_dir: str | Path, out: str | Path, rnd: int | None = None) -> Path:
    """A transformers folder with the adapters merged into the base weights, plus the base
    folder's tokenizer files (``AutoModelFor...from_pretrained(out)`` loads it)."""
    ref = model_ref(run_dir)
    if (ref.spec.get("peft") or {}).get("method") == "adapter":
        raise ValueError("--merged: bottleneck adapters are non-linear modules after their targets and cannot be "
                         "folded into the base weights; use --adapter DIR (fedkit.peft.adapter.load_adapter "
                         "puts it onto the base model)")
    folder = _base_folder(ref)
    model = load_model(run_dir, rnd)
    import peft

    inner: Any = model.inner
    merged: Any = inner.merge_and_unload() if isinstance(inner, peft.PeftModel) else inner  # bias/full: as trained
    out = Path(out)
    merged.save_pretrained(str(out))
    for name in TOKENIZER_FILES:
        if (folder / name).exists():
            shutil.copy2(folder / name, out / name)
    return out
