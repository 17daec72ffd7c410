"""Systems heterogeneity: FedAvg dropping stragglers vs FedProx doing partial work.

    python benchmarks/bench_stragglers.py [--rounds 20] [--seeds 0 1 2]

FedProx's setting (Li et al., MLSys 2020, Fig. 1; REFERENCES.md C and F1): Synthetic(1,1) with
30 devices, 10 per round, E = 20 local epochs, batch 10, lr 0.01, and 50% or 90% of the
devices too slow to finish their 20 epochs before the 60 s deadline
(``scenarios/stragglers_50.yaml``, ``scenarios/stragglers_90.yaml``). Three ways to treat them:

* FedAvg, drop: late clients are discarded (a round with no fast client is skipped);
* FedAvg, partial: each straggler sends the local steps it fits before the deadline (mu = 0);
* FedProx mu=1, partial: the same with FedProx's proximal term (the paper's method).

Every run is the in-process simulation on the simulated clock; the table gives means (and the
spread, min-max) over the seeds of the final test accuracy, the mean of the last 5 rounds,
simulated seconds and rounds to the scenario's target accuracy (0.6; "-" where a seed never
reached it, with how many did), the mean fraction of the full local work each kept update
carries, clients dropped per round and skipped rounds. Writes benchmarks/results/stragglers.md
and, for the first seed, the accuracy curves against rounds, bytes and simulated time
(benchmarks/results/stragglers_50.png, stragglers_90.png).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedkit.experiment import scenario_link
from fedkit.report import plots
from fedkit.report.run_dir import time_to_target
from fedkit.runtime.server import run
from fedkit.scenario import load
from fedkit.scenario.build import build

ROOT = Path(__file__).parents[1]
SETTINGS = {"50%": ROOT / "scenarios" / "stragglers_50.yaml", "90%": ROOT / "scenarios" / "stragglers_90.yaml"}
METHODS = {
    "FedAvg, drop": ["strategy={name: fedavg}", "server.stragglers=drop"],
    "FedAvg, partial": ["strategy={name: fedavg}", "server.stragglers=partial"],
    "FedProx mu=1, partial": ["strategy={name: fedprox, mu: 1.0}", "server.stragglers=partial"],
}


def one_run(path: Path, overrides: list[str]) -> dict[str, Any]:
    s = load(path, overrides)
    exp = build(s)
    rows: list[dict[str, Any]] = []
    link = scenario_link(exp)
    run(exp.plan, link, exp.initial_state(), lambda st, rec: rows.append(rec.row()))
    accs = [r["test_acc"] for r in rows if r.get("test_acc") is not None]
    hit = time_to_target(rows, s.evaluation.target_acc)
    kept = [r for r in rows if r["status"] == "ok"]
    return {
        "final": accs[-1],
        "last5": float(np.mean(accs[-5:])),
        "t_target": hit["time_to_target_s"],
        "r_target": hit["rounds_to_target"],
        "work": float(np.mean([r.get("work_fraction", 1.0) for r in kept])) if kept else float("nan"),
        "dropped": float(np.mean([r["clients_dropped"] for r in rows])),
        "skipped": sum(r["status"] != "ok" for r in rows),
        "sim_s": rows[-1]["sim_time_s"],
        "rows": rows,
    }


def _mean(vals: list[float], fmt: str = ".3f") -> str:
    a = np.asarray(vals, dtype=float)
    return f"{a.mean():{fmt}} ({a.min():{fmt}}-{a.max():{fmt}})"


def _reached(runs: list[dict[str, Any]], key: str, fmt: str) -> str:
    got = [r[key] for r in runs if r[key] is not None]
    if not got:
        return f"- (0/{len(runs)})"
    return f"{np.mean(got):{fmt}} ({len(got)}/{len(runs)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stragglers.md")
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    lines = [
        "# Stragglers: FedAvg dropping them vs FedProx doing partial work",
        "",
        f"`python benchmarks/bench_stragglers.py --rounds {a.rounds} --seeds "
        f"{' '.join(map(str, a.seeds))}` (or `make bench-stragglers`). FedProx's Synthetic(1,1) "
        "systems-heterogeneity setting on the simulated clock (scenarios/stragglers_*.yaml: 30 "
        "devices, 10 per round, E=20, batch 10, lr 0.01, 60 s deadline); means over the seeds, "
        "(min-max) in brackets; see the script's docstring for the columns.",
        "",
        "| stragglers | method | final acc | last-5 acc | sim s to 0.6 (seeds) | rounds to 0.6 | "
        "work kept | dropped / round | skipped rounds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for setting, path in SETTINGS.items():
        curves = {}
        for method, over in METHODS.items():
            runs = [one_run(path, [*over, f"rounds={a.rounds}", f"seed={seed}"]) for seed in a.seeds]
            curves[method] = runs[0]["rows"]
            row = [
                setting, method, _mean([r["final"] for r in runs]), _mean([r["last5"] for r in runs]),
                _reached(runs, "t_target", ".0f"), _reached(runs, "r_target", ".1f"),
                f"{np.mean([r['work'] for r in runs]):.2f}", f"{np.mean([r['dropped'] for r in runs]):.1f}",
                f"{np.mean([r['skipped'] for r in runs]):.1f}",
            ]
            lines.append("| " + " | ".join(row) + " |")
            print(lines[-1], flush=True)
        plots.compare(curves, a.out.parent / f"{path.stem}.png")
    lines += ["", f"Wall time: {time.perf_counter() - t0:.0f} s on this machine."]
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
