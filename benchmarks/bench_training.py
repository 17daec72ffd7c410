"""fedkit's in-process simulation against a no-framework floor, side by side in one run.

Workload (issue "Foundation"): Synthetic(1,1), multinomial logistic regression, 100 clients,
10 per round, 1 local epoch, batch 10, SGD lr 0.01, 20 rounds; and a variant with all 100
clients per round for 5 rounds. The floor runs the same local steps (same clients, same data,
same batch order) in one plain torch loop plus the weighted average. Each side runs in its own
fresh process so peak RSS is its own; wall time is the median of --repeats runs.

    python benchmarks/bench_training.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCENARIO = ROOT / "scenarios" / "synthetic_logreg.yaml"

VARIANTS = {
    "10 of 100 clients x 20 rounds": ["clients.per_round.count=10", "rounds=20"],
    "100 of 100 clients x 5 rounds": ["clients.per_round.count=100", "rounds=5"],
}

FEDKIT = r"""
import json, resource, sys, tempfile, time
t0 = time.perf_counter()
from fedkit.experiment import run_scenario
from fedkit.scenario import load
s = load(sys.argv[1], sys.argv[2:] + ["output.plot=false", "evaluation.every=1000"])
with tempfile.TemporaryDirectory() as d:
    t1 = time.perf_counter()
    summary = run_scenario(s, d)
    t2 = time.perf_counter()
print(json.dumps({"wall_s": t2 - t1, "total_s": t2 - t0, "acc": summary["final_accuracy"],
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

FLOOR = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import numpy as np, torch
from fedkit import rng as frng
from fedkit.data import load_dataset, partition
from fedkit.runtime.policy import Sampling, sample_clients
from fedkit.scenario import load
from fedkit.scenario.build import client_names
s = load(sys.argv[1], sys.argv[2:])
torch.set_num_threads(1)
t1 = time.perf_counter()
# Data and the per-round client choice, as the scenario defines them.
ds = load_dataset("synthetic", s.seed, alpha=1.0, beta=1.0, num_users=100)
parts = partition("natural", ds.y_train, 100, s.seed, groups=ds.groups)
names = client_names(100)
xs = [torch.from_numpy(ds.x_train[p]) for p in parts]
ys = [torch.from_numpy(ds.y_train[p]) for p in parts]
plan = Sampling(s.seed, fraction=None, count=s.clients.per_round.count)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(60, 10))
glob = [p.detach().clone() for p in model.parameters()]
for rnd in range(1, s.rounds + 1):
    chosen = [names.index(c) for c in sample_clients(plan, names, rnd)]
    acc = [torch.zeros_like(g) for g in glob]
    total = 0
    for i in chosen:
        with torch.no_grad():
            for p, g in zip(model.parameters(), glob):
                p.copy_(g)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = xs[i], ys[i]
        gen = frng.rng(s.seed, "train", rnd, names[i])
        perm = torch.from_numpy(gen.permutation(len(y)))
        for j in range(0, len(y), 10):
            idx = perm[j:j + 10]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        n = len(y)
        total += n
        for a, p in zip(acc, model.parameters()):
            a.add_(p.detach(), alpha=n)
    glob = [a / total for a in acc]
t2 = time.perf_counter()
print(json.dumps({"wall_s": t2 - t1, "total_s": t2 - t0, "acc": None,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _run(code: str, overrides: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, str(SCENARIO), *overrides],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "training.md"))
    args = ap.parse_args()
    lines = [
        "# In-process simulation vs a no-framework floor",
        "",
        "Synthetic(1,1), logistic regression, 1 local epoch, batch 10, SGD lr 0.01. "
        f"Median wall time of {args.repeats} runs, each side in a fresh process; "
        "wall = the workload (data generation, training, aggregation) after imports; "
        "peak RSS = the process's max resident set.",
        "",
        "| workload | floor s | fedkit s | time ratio | floor RSS MB | fedkit RSS MB | RSS ratio | fedkit start-to-end s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, over in VARIANTS.items():
        floor, fed = [], []
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
            floor.append(_run(FLOOR, over))
            fed.append(_run(FEDKIT, over))
        fw = statistics.median(r["wall_s"] for r in floor)
        kw = statistics.median(r["wall_s"] for r in fed)
        fr = max(r["rss_mb"] for r in floor)
        kr = max(r["rss_mb"] for r in fed)
        kt = statistics.median(r["total_s"] for r in fed)
        lines.append(
            f"| {name} | {fw:.2f} | {kw:.2f} | {kw / fw:.2f}x | {fr:.0f} | {kr:.0f} | {kr / fr:.2f}x | {kt:.2f} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
