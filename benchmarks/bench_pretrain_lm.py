"""The character LM: pre-trained on the language reference, fine-tuned federatedly on docstrings.

    python benchmarks/bench_pretrain_lm.py [--rounds 5] [--pretrain-epochs 3]

Needs fedkit/data/text.py's corpora (``pydoc_topics``, ``docstrings_lm``; char vocabulary, blocks
of 64 tokens). 1. ``char_lm`` (dim 64, 2 blocks) pre-trained centrally on ``pydoc_topics`` (the
79 topics of ``pydoc_data``): held-out perplexity before and after. 2. Federated full fine-tuning
on ``docstrings_lm`` (8 stdlib packages, natural partition: one client per package, Adam, 1
local epoch per round) from the checkpoint and from scratch: the docstrings' held-out perplexity
before fine-tuning and after each round.

Writes benchmarks/results/pretrain_lm.md and prints it. torch runs on one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from fedkit import rng as frng  # noqa: E402
from fedkit.experiment import run_scenario  # noqa: E402
from fedkit.models import LocalData, evaluate, init_model  # noqa: E402
from fedkit.pretrain import pretrain  # noqa: E402
from fedkit.scenario import validate  # noqa: E402
from fedkit.scenario.build import load_data  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "pretrain_lm.md"
MODEL = {"name": "char_lm", "dim": 64, "depth": 2, "heads": 4}
TRAIN = {"batch_size": 32, "optimizer": "adam"}


def scenario(name: str, dataset: dict[str, Any], model: dict[str, Any], rounds: int, clients: int,
             epochs: int, lr: float, partition: str = "iid") -> Any:
    return validate({"name": name, "seed": 0, "rounds": rounds, "clients": {"count": clients},
                     "data": {"dataset": dataset, "partition": {"name": partition}}, "model": model,
                     "train": TRAIN | {"epochs": epochs, "lr": lr}, "output": {"plot": False}})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pretrain-epochs", type=int, default=3)
    args = p.parse_args()
    try:
        import fedkit.data.text  # noqa: F401
    except ImportError:
        print("bench_pretrain_lm: needs fedkit/data/text.py (the text corpora)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    src = {"name": "pydoc_topics", "tokenizer": "char", "max_length": 64}
    tgt = {"name": "docstrings_lm", "tokenizer": "char", "max_length": 64}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ckpt, pm = pretrain(scenario("pretrain-charlm-pydoc", src, MODEL, 1, 1, args.pretrain_epochs, 0.003),
                            Path(tmp) / "model")
        pre_s = time.perf_counter() - t0
        for name, model in (("pretrained", {"name": "char_lm", "checkpoint": str(ckpt)}), ("scratch", MODEL)):
            s = scenario(f"finetune-{name}", tgt, model, args.rounds, 8, 1, 0.002, partition="natural")
            ds, _ = load_data(s)
            test = LocalData(torch.from_numpy(ds.x_test).float(), torch.from_numpy(ds.y_test).long())
            start = evaluate(init_model(s.model, ds.input_shape, ds.num_classes, frng.seed_int(s.seed, "init")), test)
            t0 = time.perf_counter()
            run_scenario(s, Path(tmp) / name)
            log = [json.loads(line) for line in (Path(tmp) / name / "metrics.jsonl").read_text().splitlines()]
            rows[name] = {"start": start["perplexity"], "ppl": [r["test_perplexity"] for r in log],
                          "acc": log[-1]["test_acc"], "wall_s": time.perf_counter() - t0}
    b, a = pm["before"], pm["after"]
    lines = [
        "# Pre-training transfer: character LM, pydoc_data topics -> stdlib docstrings",
        "",
        f"`python benchmarks/bench_pretrain_lm.py --rounds {args.rounds} --pretrain-epochs {args.pretrain_epochs}` "
        f"(`make bench-pretrain-lm`); torch 1 thread, load {os.getloadavg()[0]:.1f}. Model: char_lm dim 64, "
        "2 blocks, 4 heads; char vocabulary (98 ids), blocks of 64 tokens.",
        "",
        f"Pre-training (central, `pydoc_topics`, {args.pretrain_epochs} epochs, Adam 3e-3): held-out perplexity "
        f"{b['perplexity']:.1f} -> {a['perplexity']:.2f}, token accuracy {b['accuracy']:.3f} -> {a['accuracy']:.3f} "
        f"({pre_s:.0f} s).",
        "",
        "## Federated full fine-tuning on `docstrings_lm` (8 clients = 8 packages, natural; 1 epoch / round)",
        "",
        "| start | perplexity before | " + " | ".join(f"after round {i + 1}" for i in range(args.rounds))
        + " | token acc | wall s |",
        "|---|---|" + "---|" * (args.rounds + 2),
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['start']:.2f} | " + " | ".join(f"{x:.2f}" for x in r["ppl"])
                     + f" | {r['acc']:.3f} | {r['wall_s']:.0f} |")
    lines += ["", "Perplexity is exp(mean next-token cross entropy) over the docstrings' held-out blocks "
              "(fedkit/models/train.py); a uniform guess over the vocabulary is 98."]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
