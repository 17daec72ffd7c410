"""The FedProx Synthetic(1,1) protocol (Li et al., MLSys 2020): fedkit against a plain numpy
implementation with hand-written gradients, FedAvg and FedProx (mu=1) side by side.

Protocol: Synthetic(1,1) from fedkit's generator (seed 0), 30 users with their natural split,
multinomial logistic regression, 10 users per round, 200 rounds, E=20 local epochs, batch 10,
SGD lr 0.01, weighted averaging by sample count. Both sides use the same data, the same sampled
users per round, the same initial model and the same batches (each user's shuffles come from
``fedkit.rng(seed, "train", round, client)``), so their final accuracies agree too.

The numpy side (``NUMPY`` below) is what one writes by hand: one user at a time, one batch at a
time, softmax cross-entropy gradients written out. fedkit runs the scenario as a user would,
``execution: stacked`` (and, with --sequential, the default sequential executor; that takes
several minutes). Target: fedkit <= 1.0x the numpy implementation, FedAvg and FedProx alike.

    python benchmarks/bench_fedprox.py [--repeats 1] [--rounds 200] [--sequential]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCENARIO = ROOT / "scenarios" / "synthetic_logreg.yaml"


def protocol(rounds: int) -> list[str]:
    return [
        "clients.count=30", "data.dataset.num_users=30", "clients.per_round.count=10", f"rounds={rounds}",
        "train={epochs: 20, batch_size: 10, optimizer: sgd, lr: 0.01}", "evaluation.every=100000",
        "output.plot=false", "output.checkpoint=false",
    ]


STRATEGIES = {"FedAvg": "strategy={name: fedavg}", "FedProx mu=1": "strategy={name: fedprox, mu: 1.0}"}

NUMPY = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from fedkit import rng as frng
from fedkit.data import load_dataset, partition
from fedkit.runtime.policy import Sampling, sample_clients
from fedkit.scenario import load
from fedkit.scenario.build import build_server, client_names
s = load(sys.argv[1], sys.argv[2:])
mu = float(s.strategy.get("mu", 0.0))
_, init = build_server(s)  # the same initial model as fedkit's run (seeded init)
t1 = time.perf_counter()
ds = load_dataset("synthetic", s.seed, alpha=1.0, beta=1.0, num_users=30)
parts = partition("natural", ds.y_train, 30, s.seed, groups=ds.groups)
names = client_names(30)
xs = [ds.x_train[p] for p in parts]
ys = [ds.y_train[p] for p in parts]
sampling = Sampling(s.seed, fraction=None, count=10)
W, b = init[0].copy(), init[1].copy()  # W: [classes, features]
lr, bs, epochs = s.train.lr, s.train.batch_size, s.train.epochs
for rnd in range(1, s.rounds + 1):
    chosen = [names.index(c) for c in sample_clients(sampling, names, rnd)]
    acc_w, acc_b, total = np.zeros_like(W), np.zeros_like(b), 0
    for i in chosen:
        x, y = xs[i], ys[i]
        n = len(y)
        w, c = W.copy(), b.copy()
        gen = frng.rng(s.seed, "train", rnd, names[i])
        for _ in range(epochs):
            perm = gen.permutation(n)
            for j in range(0, n, bs):
                idx = perm[j:j + bs]
                xb, yb = x[idx], y[idx]
                z = xb @ w.T + c
                z -= z.max(axis=1, keepdims=True)
                p = np.exp(z)
                p /= p.sum(axis=1, keepdims=True)
                p[np.arange(len(idx)), yb] -= 1.0
                p /= len(idx)
                gw, gc = p.T @ xb, p.sum(axis=0)
                if mu:
                    gw += mu * (w - W)
                    gc += mu * (c - b)
                w -= lr * gw
                c -= lr * gc
        acc_w += n * w
        acc_b += n * c
        total += n
    W, b = (acc_w / total).astype(np.float32), (acc_b / total).astype(np.float32)
t2 = time.perf_counter()
acc = float(((ds.x_test @ W.T + b).argmax(1) == ds.y_test).mean())
print(json.dumps({"wall_s": t2 - t1, "total_s": t2 - t0, "acc": acc}))
"""

FEDKIT = r"""
import json, sys, tempfile, time
t0 = time.perf_counter()
from fedkit.experiment import run_scenario
from fedkit.scenario import load
s = load(sys.argv[1], sys.argv[2:])
with tempfile.TemporaryDirectory() as d:
    t1 = time.perf_counter()
    summary = run_scenario(s, d)
    t2 = time.perf_counter()
print(json.dumps({"wall_s": t2 - t1, "total_s": t2 - t0, "acc": summary["final_accuracy"]}))
"""


def _run(code: str, overrides: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", code, str(SCENARIO), *overrides],
                         check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _load() -> str:
    return "load average {:.1f} / {:.1f} / {:.1f}".format(*os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--sequential", action="store_true", help="also time fedkit's sequential executor")
    ap.add_argument("--out", default=str(HERE / "results" / "fedprox_synthetic.md"))
    args = ap.parse_args()
    import numpy
    import torch

    executors = ["stacked", *(["sequential"] if args.sequential else [])]
    lines = [
        "# FedProx Synthetic(1,1) protocol: fedkit against plain numpy",
        "",
        f"30 users, 10 per round, {args.rounds} rounds, E=20, batch 10, lr 0.01, logistic regression, "
        f"generator seed 0. torch {torch.__version__}, numpy {numpy.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} cores. Median of {args.repeats} run(s), each side in a "
        "fresh process, interleaved; wall = after imports (data generation, training, aggregation, "
        f"final evaluation). Machine at the start: {_load()}.",
        "",
        "| strategy | numpy s | " + " | ".join(f"fedkit {e} s | {e} / numpy" for e in executors)
        + " | target | final acc (numpy / " + " / ".join(executors) + ") |",
        "|---|---:|" + "---:|---:|" * len(executors) + "---:|---|",
    ]
    for name, strat in STRATEGIES.items():
        over = [*protocol(args.rounds), strat]
        runs: dict[str, list[dict]] = {"numpy": [], **{e: [] for e in executors}}
        for _ in range(args.repeats):
            runs["numpy"].append(_run(NUMPY, over))
            for e in executors:
                runs[e].append(_run(FEDKIT, [*over, f"execution.kind={e}"]))
        wall = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
        cells = " | ".join(f"{wall[e]:.1f} | **{wall[e] / wall['numpy']:.2f}x**" for e in executors)
        accs = " / ".join(f"{runs[k][0]['acc']:.4f}" for k in runs)
        lines.append(f"| {name} | {wall['numpy']:.1f} | {cells} | <= 1.0x | {accs} |")
        print(lines[-1], _load(), flush=True)
    lines += ["", f"Machine at the end: {_load()}."]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
