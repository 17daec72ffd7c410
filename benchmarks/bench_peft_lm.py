"""Reference experiment 4: a character LM pre-trained on one stdlib corpus, LoRA fine-tuned
federatedly on another (benchmarks/results/peft.md, section 4).

    python benchmarks/bench_peft_lm.py [--rounds 3] [--pretrain-epochs 3] [--clients 8]

1. ``char_lm`` (dim 64, 2 blocks, 4 heads; fedkit's fixed 98-id character vocabulary, blocks of
   64 tokens) pre-trained centrally on ``docstrings_lm`` (the docstrings of 8 stdlib packages) with
   ``fedkit.pretrain`` and saved as a checkpoint folder.
2. From that checkpoint, fine-tuning on ``pydoc_topics`` (the language reference in
   ``pydoc_data``), natural partition: the 79 topics packed into ``--clients`` groups of whole
   topics (``num_groups``), one client each, all clients every round, 1 local epoch per round:
   federated LoRA (fedkit.experiment.run_scenario), the same LoRA trained centrally on the union
   of the clients' samples for the same number of passes (fedkit.centralized), and federated full
   fine-tuning for reference. All evaluated on the same held-out ``pydoc_topics`` blocks; "before"
   is the pre-trained checkpoint with no fine-tuning.

Runs in-process on one torch thread (as ``fedkit run``); rewrites section 4 of
benchmarks/results/peft.md (benchmarks/peft_results.py) and prints it.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from bench_pretrain_lm import MODEL, scenario  # noqa: E402
from peft_results import write_section  # noqa: E402

from fedkit.centralized import centralized  # noqa: E402
from fedkit.experiment import run_scenario  # noqa: E402
from fedkit.models import LocalData, build_model, evaluate  # noqa: E402
from fedkit.pretrain import pretrain  # noqa: E402
from fedkit.report.run_dir import read_metrics  # noqa: E402
from fedkit.scenario import validate  # noqa: E402
from fedkit.scenario.build import build, load_data  # noqa: E402

SEQ = 64
SOURCE = {"name": "docstrings_lm", "tokenizer": "char", "max_length": SEQ}
LORA = {"method": "lora", "lora": {"r": 8, "alpha": 16, "targets": ["query", "value", "fc1", "fc2"]}}
LR_LORA, LR_FULL = 0.003, 0.001


def target(clients: int) -> dict[str, Any]:
    return {"name": "pydoc_topics", "tokenizer": "char", "max_length": SEQ, "num_groups": clients}


def finetune(name: str, ckpt: Path, rounds: int, clients: int, lr: float, peft: dict[str, Any] | None) -> Any:
    s = scenario(name, target(clients), {"name": "char_lm", "checkpoint": str(ckpt)}, rounds, clients, 1, lr,
                 partition="natural")
    if peft is None:
        return s
    return validate(s.model_dump(mode="json", exclude_unset=True) | {"peft": peft})


def federated(s: Any, out: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    run_scenario(s, out)
    wall = time.perf_counter() - t0
    log = read_metrics(out)
    up = [float(r["bytes_up"]) / int(r["clients_sampled"]) for r in log]
    return {"ppl": [float(r["test_perplexity"]) for r in log], "acc": float(log[-1]["test_acc"]),
            "bytes_client_round": up[-1], "bytes_total": sum(float(r["bytes_up"]) + float(r["bytes_down"]) for r in log),
            "wall_s": wall, "trainable": sum(a.size for a in build(s).init_params)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--clients", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(1)
    load0, t_all = os.getloadavg(), time.perf_counter()
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ckpt, pm = pretrain(scenario("pretrain-charlm-docstrings", SOURCE, MODEL, 1, 1, args.pretrain_epochs, 0.003),
                            Path(tmp) / "model")
        pre_s = time.perf_counter() - t0
        lora = finetune("peft-lm-lora", ckpt, args.rounds, args.clients, LR_LORA, LORA)
        ds, parts = load_data(lora)
        test = LocalData(torch.from_numpy(ds.x_test).float(), torch.from_numpy(ds.y_test).long())
        before = evaluate(build_model({"name": "char_lm", "checkpoint": str(ckpt)}, ds.input_shape, ds.num_classes), test)
        rows["federated LoRA"] = federated(lora, Path(tmp) / "lora")
        t0 = time.perf_counter()
        c = centralized(lora)
        rows["centralised LoRA"] = {"ppl": [float(c["perplexity"])], "acc": float(c["accuracy"]),
                                    "wall_s": time.perf_counter() - t0, "trainable": rows["federated LoRA"]["trainable"]}
        full = finetune("peft-lm-full", ckpt, args.rounds, args.clients, LR_FULL, None)
        rows["federated full FT"] = federated(full, Path(tmp) / "full")
    load1 = os.getloadavg()
    blocks = [len(q) for q in parts]
    cmd = (f"python benchmarks/bench_peft_lm.py --rounds {args.rounds} --pretrain-epochs {args.pretrain_epochs} "
           f"--clients {args.clients}")
    lines = [
        f"`{cmd}` (`make bench-peft-lm`), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; in-process, "
        f"torch 1 thread; load average {load0[0]:.1f} at start, {load1[0]:.1f} at the end (2 cores shared); "
        f"whole benchmark {time.perf_counter() - t_all:.0f} s.",
        "",
        f"Model: `char_lm` (dim 64, 2 blocks, 4 heads, {sum(t.numel() for t in build_model(MODEL, ds.input_shape, ds.num_classes).parameters()):,} "
        "parameters), fedkit's fixed character vocabulary (98 ids, so both corpora share ids), blocks of "
        f"{SEQ} tokens.",
        "",
        f"- **Pre-training** (central, `fedkit.pretrain`): `docstrings_lm`, the docstrings of 8 stdlib packages, "
        f"{args.pretrain_epochs} epochs, Adam 3e-3, batch 32: its own held-out perplexity "
        f"{pm['before']['perplexity']:.1f} -> {pm['after']['perplexity']:.2f} ({pre_s:.0f} s).",
        f"- **Fine-tuning task**: `pydoc_topics` (the language reference from `pydoc_data`: another style of "
        f"English and Python), natural partition: its 79 topics packed into {args.clients} clients of whole "
        f"topics (`num_groups: {args.clients}`; {min(blocks)}-{max(blocks)} blocks of {SEQ} characters each, "
        f"{sum(blocks)} in all), every client every round, 1 local epoch per round, batch 32, Adam; "
        f"{args.rounds} rounds. Held-out: the {len(ds.y_test)} test blocks of `pydoc_topics` (10%, stratified by topic).",
        f"- **LoRA**: r=8, alpha 16 on `query`, `value`, `fc1`, `fc2` of both blocks, lr {LR_LORA}; the "
        f"pre-trained base frozen, only the {rows['federated LoRA']['trainable']:,} adapter values train and "
        f"travel. Centralised LoRA: the same adapters on the union of the clients' blocks for "
        f"{args.rounds} epochs (fedkit.centralized: rounds x epochs passes). Full FT: every weight, lr {LR_FULL}.",
        "",
        "| run | trainable | perplexity before | " + " | ".join(f"round {i + 1}" for i in range(args.rounds))
        + " | after | next-char acc | bytes up / client / round | bytes total (up+down) | wall s |",
        "|---|---|---|" + "---|" * args.rounds + "---|---|---|---|---|",
    ]
    for name, r in rows.items():
        curve = r["ppl"] if len(r["ppl"]) == args.rounds else ["-"] * args.rounds
        lines.append(
            f"| {name} | {r['trainable']:,} | {before['perplexity']:.2f} | "
            + " | ".join(x if isinstance(x, str) else f"{x:.2f}" for x in curve)
            + f" | **{r['ppl'][-1]:.2f}** | {r['acc']:.3f} | "
            + (f"{r['bytes_client_round']:,.0f} | {r['bytes_total']:,.0f}" if "bytes_total" in r else "- | -")
            + f" | {r['wall_s']:.0f} |"
        )
    fl, cl = rows["federated LoRA"]["ppl"][-1], rows["centralised LoRA"]["ppl"][-1]
    ff = rows["federated full FT"]["ppl"][-1]
    lines += [
        "",
        f"Perplexity is exp(mean next-character cross entropy) on the held-out blocks (uniform guess: 98). "
        f"Fine-tuning lowers the pre-trained model's perplexity on the new corpus from {before['perplexity']:.2f} "
        f"to {fl:.2f} with federated LoRA against {cl:.2f} centralised: federating it (whole topics per client, "
        f"averaging after each local epoch, Adam restarting each round) costs {100 * (fl / cl - 1):+.1f}% perplexity "
        f"at the same number of passes. Federated full FT reaches {ff:.2f} but sends "
        f"{rows['federated full FT']['bytes_client_round'] / rows['federated LoRA']['bytes_client_round']:.1f}x the "
        "bytes per client per round. Bytes are the encoded payloads of the identity codec (float32 tensors + "
        "framing) from metrics.jsonl.",
    ]
    write_section(4, "The causal LM: pre-trained on docstrings, LoRA fine-tuned federatedly on the language reference",
                  lines)
    print("\n".join(lines))
    print(json.dumps({k: {kk: v for kk, v in r.items() if kk != "ppl"} for k, r in rows.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
