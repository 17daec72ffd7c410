"""Accuracy vs ε: central DP-FedAvg on digits (scenarios/digits_dp.yaml) at ε = 1, 4, 8.

    python benchmarks/bench_dp.py [--rounds 30]

The reference scenario: digits (1437 training images) spread over 500 clients (2-3 images
each, so user-level DP is close to example-level here), Poisson sampling with q = 0.2 (about
100 clients a round), an MLP with 32 hidden units, one local step, FedAvg, 30 rounds, clip
norm 1, δ = 1e-5, PLD accountant. For each target ε the accountant calibrates the noise
multiplier z so that the full run reaches it; the table gives z, the noise std on the averaged
update (z C / (q N)), the ε the run actually logged, and the final and best test accuracy.
Rows: no DP (same scenario without the privacy section: plain FedAvg, no clipping), central DP
at ε = 1, 4, 8, adaptive clipping (Andrew et al. 2021, target quantile 0.5) at ε = 4, and
local DP (every client noises its own update, no amplification by sampling) at ε = 8, to show
why central DP is the default. Each run is one in-process run of the scenario (the same code
as ``fedkit run``); the wall time includes the calibration (bisection over PLD, tens of
seconds) and depends on the machine's load, printed with the table.

Writes benchmarks/results/dp.md and prints it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from fedkit.experiment import run_scenario
from fedkit.scenario import load
from fedkit.scenario.build import _aggregator
from fedkit.scenario.privacy import dp_plan, sampling_of

HERE = Path(__file__).resolve().parent
SCENARIO = HERE.parent / "scenarios" / "digits_dp.yaml"

ROWS: dict[str, list[str]] = {
    "no DP": ["privacy.dp=null"],
    "central, ε = 1": ["privacy.dp.target_epsilon=1"],
    "central, ε = 4": ["privacy.dp.target_epsilon=4"],
    "central, ε = 8": ["privacy.dp.target_epsilon=8"],
    "central adaptive clip, ε = 4": ["privacy.dp.target_epsilon=4", "privacy.dp.adaptive={count_stddev: 5.0}"],
    "local, ε = 8": ["privacy.dp.target_epsilon=8", "privacy.dp.mode=local"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--only", nargs="*", help="run only these rows (by name)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "dp.md")
    a = ap.parse_args()

    lines = [
        "| setting | z | noise std on the mean | ε logged (δ = 1e-5) | final acc | best acc | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, over in ROWS.items():
        if a.only and name not in a.only:
            continue
        s = load(SCENARIO, [*over, f"rounds={a.rounds}"])
        t0 = time.perf_counter()
        z = std = "-"
        if s.privacy.dp is not None:
            plan = dp_plan(s, _aggregator(s))
            assert plan is not None
            expected = sampling_of(s)[2]
            z = f"{plan.noise_multiplier:.3f}"
            c = s.privacy.dp.clip_norm
            if plan.aggregator is None:
                std = f"{plan.noise_multiplier * c:.3f} per client"
            else:  # the update's share of z (all of it without adaptive clipping), at the first clip norm
                std = f"{plan.aggregator.noise_multiplier * c / expected:.4f}"
                std += " (at C0)" if plan.aggregator.adaptive is not None else ""
        with tempfile.TemporaryDirectory() as d:
            sm = run_scenario(s, Path(d) / "run")
        wall = time.perf_counter() - t0
        eps = f"{sm['dp_epsilon']:.3f}" if sm.get("dp_epsilon") is not None else "∞"
        lines.append(f"| {name} | {z} | {std} | {eps} | {sm['final_accuracy']:.3f} | {sm['best_accuracy']:.3f} "
                     f"| {wall:.0f} |")
        print(lines[-1], flush=True)
    load1 = os.getloadavg()[0]
    text = "\n".join([
        "# Accuracy vs ε: central DP-FedAvg on digits",
        "",
        f"`python benchmarks/bench_dp.py --rounds {a.rounds}` on scenarios/digits_dp.yaml: 500 clients, Poisson "
        "q = 0.2, MLP(32), clip norm 1, PLD accountant; z calibrated to each target ε for the whole run "
        "(see the script's docstring). One seed (0); test accuracy on the central test split (360 images).",
        f"Machine: {os.cpu_count()} cores shared with other jobs (1-min load average {load1:.1f} at the end), "
        "so wall times are indicative only.",
        "",
        *lines,
    ]) + "\n"
    if not a.only:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
