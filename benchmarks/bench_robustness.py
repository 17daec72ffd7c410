"""Robust aggregators against update attacks, on synthetic update sets (no training yet).

    python benchmarks/bench_robustness.py [--clients 20] [--dim 1000] [--trials 20]

Each trial draws a true direction ``g`` (norm 1) and ``n`` honest deltas ``g + noise`` (noise
norm about 1, so one honest update is a poor estimate and the mean is a good one); the chosen
attack replaces 0%, 10% or 30% of them (clients chosen by ``choose_malicious``). Krum, Bulyan
and Multi-Krum are told ``f`` = the number of attackers, the trimmed mean cuts that fraction
(at least 10%) on each side, centered clipping and norm bounding use the honest norm
(``sqrt(2)``) as radius, FLTrust gets a fresh honest-like root update. The score is the error
``||aggregate - g||`` (``||g|| = 1``: 0 is perfect, 1 is as good as not moving, above 1 is
harm), the mean over trials; "n/a" where the rule cannot run (Bulyan needs n >= 4f + 3).
The error, unlike a cosine, also counts a scaled update that points the right way but
overshoots. Label flip is a
data attack and needs the training engine: it is not in this table. Writes
benchmarks/results/robustness_synthetic.md and prints it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedkit import rng as frng
from fedkit.aggregation import ROOT_CLIENT, make_aggregator
from fedkit.attacks import choose_malicious, make_attack
from fedkit.types import Update

ATTACKS = {
    "none": None,
    "sign_flip x10": ("sign_flip", {"factor": 10.0}),
    "scaling": ("scaling", {}),
    "gaussian std=1": ("gaussian", {"std": 1.0}),
    "little_is_enough": ("little_is_enough", {}),
}
FRACTIONS = (0.1, 0.3)


def strategies(n: int, f: int, frac: float) -> dict[str, Callable[[], object]]:
    radius = math.sqrt(2.0)
    return {
        "fedavg": lambda: make_aggregator("fedavg"),
        "fedmedian": lambda: make_aggregator("fedmedian"),
        "fedtrimmedavg": lambda: make_aggregator("fedtrimmedavg", beta=max(frac, 0.1)),
        "krum": lambda: make_aggregator("krum", f=f),
        "multikrum": lambda: make_aggregator("multikrum", f=f),
        "bulyan": lambda: make_aggregator("bulyan", f=f),
        "centeredclip": lambda: make_aggregator("centeredclip", tau=radius, iters=3),
        "normbound": lambda: make_aggregator("normbound", max_norm=radius),
        "fltrust": lambda: make_aggregator("fltrust"),
    }


def one_trial(
    seed: int, trial: int, n: int, d: int, attack: tuple[str, dict] | None, frac: float
) -> dict[str, float]:
    gen = frng.rng(seed, "bench-robust", trial)
    g = gen.normal(size=d)
    g /= np.linalg.norm(g)
    names = [f"c{i:03d}" for i in range(n)]
    honest = [Update(c, [g + gen.normal(size=d) / math.sqrt(d)], 10) for c in names]
    root = Update(ROOT_CLIENT, [g + gen.normal(size=d) / math.sqrt(d)], 100)
    bad = choose_malicious(names, frac, seed + trial) if attack else frozenset()
    ups = honest
    if attack is not None:
        kind, params = attack
        ups = make_attack(kind, **params)(honest, bad, seed=seed, round=trial)
    out: dict[str, float] = {}
    x = [np.zeros(d)]
    for name, build in strategies(n, len(bad), frac).items():
        try:
            agg = build()
            batch = [*ups, root] if name == "fltrust" else ups
            _, y = agg.step(agg.init(x), x, batch)  # type: ignore[attr-defined]
        except ValueError:
            out[name] = math.nan
            continue
        out[name] = float(np.linalg.norm(y[0] - g))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--dim", type=int, default=1000)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "robustness_synthetic.md"
    )
    a = ap.parse_args()

    cols: list[tuple[str, float]] = [("none", 0.0)] + [
        (k, fr) for k in ATTACKS if k != "none" for fr in FRACTIONS
    ]
    names = list(strategies(a.clients, 0, 0.0))
    table: dict[str, list[str]] = {s: [] for s in names}
    for key, frac in cols:
        scores = [
            one_trial(a.seed, t, a.clients, a.dim, ATTACKS[key], frac) for t in range(a.trials)
        ]
        for s in names:
            vals = [r[s] for r in scores]
            table[s].append("n/a" if any(math.isnan(v) for v in vals) else f"{np.mean(vals):.3f}")

    header = ["aggregator"] + [k if k == "none" else f"{k} {int(fr * 100)}%" for k, fr in cols]
    lines = [
        "# Robust aggregation under update attacks (synthetic updates)",
        "",
        f"`python benchmarks/bench_robustness.py --clients {a.clients} --dim {a.dim} "
        f"--trials {a.trials} --seed {a.seed}`. Error ||aggregate - g|| with ||g|| = 1, mean over "
        "trials (0 perfect, 1 = not moving, > 1 harm); see the script's docstring.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join([s, *table[s]]) + " |" for s in names]
    text = "\n".join(lines) + "\n"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
