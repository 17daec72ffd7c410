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

    python benchmarks/bench_robustness.py --table digits [--rounds 6]

The same aggregators under the scenario ``attacks:`` section, trained end to end on digits
(the engine, in-process): 20 clients (iid), all of them every round, MLP(32), 2 local epochs,
batch 16, lr 0.3, 6 rounds; 10% or 30% of the clients attack (chosen by seed). Attacks:
sign flip x4, scaling (model replacement, factor = 20 clients), Gaussian noise (std 1 per
coordinate, about 60x an honest update's norm), "a little is enough" (colluding, at the server's
door), label flip (y -> 9 - y on the attackers' data). Krum, Multi-Krum and Bulyan are told
f = the number of attackers, the trimmed mean cuts max(fraction, 10%) per side, centered
clipping and norm bounding use the median honest update norm of round 1 as radius, FLTrust's
root set is 100 images drawn by seed from the *training* split (never the test split).
The score is the final test accuracy (central test split, 360 images). Writes
benchmarks/results/robustness.md and prints it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import replace
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
    ap.add_argument("--table", choices=("synthetic", "digits", "both"), default="both")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--dim", type=int, default=1000)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=6, help="digits: training rounds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="default: results/robustness[_synthetic].md")
    a = ap.parse_args()
    if a.table in ("synthetic", "both"):
        synthetic(a, a.out if a.out and a.table == "synthetic" else RESULTS / "robustness_synthetic.md")
    if a.table in ("digits", "both"):
        digits(a, a.out if a.out and a.table == "digits" else RESULTS / "robustness.md")


RESULTS = Path(__file__).parent / "results"


def synthetic(a: argparse.Namespace, out: Path) -> None:

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
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


# --- end to end on digits, through the scenario's attacks: section ---------------------------

DIGITS_ATTACKS: dict[str, dict[str, object] | None] = {
    "none": None,
    "sign_flip x4": {"kind": "sign_flip", "factor": 4.0},
    "scaling": {"kind": "scaling"},
    "gaussian std=1": {"kind": "gaussian", "std": 1.0},
    "little_is_enough": {"kind": "little_is_enough"},
    "label_flip": {"kind": "label_flip"},
}


def digits_raw(seed: int, rounds: int, clients: int) -> dict[str, object]:
    return {
        "name": "robustness_digits", "seed": seed, "rounds": rounds,
        "clients": {"count": clients, "per_round": {"fraction": 1.0}},
        "data": {"dataset": {"name": "digits"}, "partition": {"name": "iid"}},
        "model": {"name": "mlp", "hidden": [32]},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.3},
        "output": {"plot": False, "checkpoint": False},
    }


def digits_strategies(f: int, frac: float, radius: float) -> dict[str, dict[str, object]]:
    return {
        "fedavg": {"name": "fedavg"},
        "fedmedian": {"name": "fedmedian"},
        "fedtrimmedavg": {"name": "fedtrimmedavg", "beta": max(frac, 0.1)},
        "krum": {"name": "krum", "f": f},
        "multikrum": {"name": "multikrum", "f": f},
        "bulyan": {"name": "bulyan", "f": f},
        "centeredclip": {"name": "centeredclip", "tau": radius, "iters": 3},
        "normbound": {"name": "normbound", "max_norm": radius},
        "fltrust": {"name": "fltrust", "root_size": 100},
    }


def _train(raw: dict[str, object]) -> tuple[float, list[float]]:
    """Final test accuracy of one run, and the update norms the aggregator saw in round 1."""
    from fedkit.experiment import inprocess_link
    from fedkit.runtime.server import run
    from fedkit.scenario.build import build
    from fedkit.scenario.load import validate
    from fedkit.secure.dp import global_norm

    exp = build(validate(raw))
    norms: list[float] = []
    inner = exp.plan.aggregator

    class Watch:
        def init(self, params):  # type: ignore[no-untyped-def]
            return inner.init(params)

        def step(self, state, params, updates):  # type: ignore[no-untyped-def]
            if not norms:
                norms.extend(global_norm(u.delta) for u in updates)
            return inner.step(state, params, updates)

    plan = replace(exp.plan, aggregator=Watch())
    final = run(plan, inprocess_link(exp.clients, mods=exp.mods), exp.initial_state())
    assert exp.plan.evaluate is not None
    return float(exp.plan.evaluate(final.params)["accuracy"]), norms


def digits(a: argparse.Namespace, out: Path) -> None:
    import os
    import time

    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    base = digits_raw(a.seed, a.rounds, a.clients)
    _, norms = _train(base | {"rounds": 1})
    radius = float(np.median(norms))
    cols: list[tuple[str, float]] = [("none", 0.0)] + [
        (k, fr) for k in DIGITS_ATTACKS if k != "none" for fr in FRACTIONS
    ]
    names = list(digits_strategies(0, 0.0, radius))
    table: dict[str, list[str]] = {s: [] for s in names}
    for key, frac in cols:
        attack = DIGITS_ATTACKS[key]
        f = math.floor(frac * a.clients + 1e-9)
        for s, strat in digits_strategies(f, frac, radius).items():
            raw = base | {"strategy": strat, "attacks": [] if attack is None else [attack | {"fraction": frac}]}
            try:
                acc, _ = _train(raw)
            except ValueError as e:  # Bulyan needs n >= 4f + 3
                if "needs at least" not in str(e):
                    raise
                table[s].append("n/a")
                continue
            table[s].append(f"{acc:.3f}")
        print(f"{key} {frac:.0%} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    header = ["aggregator"] + [k if k == "none" else f"{k} {int(fr * 100)}%" for k, fr in cols]
    lines = [
        "# Robust aggregation under attack, end to end on digits",
        "",
        f"`python benchmarks/bench_robustness.py --table digits --clients {a.clients} --rounds {a.rounds} "
        f"--seed {a.seed}`: final test accuracy after {a.rounds} rounds of {a.clients} clients (all per round), "
        "attacks from the scenario's `attacks:` section; see the script's docstring for every setting. "
        f"Centered clipping and norm bounding radius: {radius:.3f} (median honest update norm, round 1). "
        "FLTrust's root set: 100 images drawn by seed from the training split. One seed; 'n/a': Bulyan "
        "needs n >= 4f + 3.",
        f"Took {time.perf_counter() - t0:.0f} s on {os.cpu_count()} cores shared with other jobs "
        f"(1-min load average {os.getloadavg()[0]:.1f} at the end).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join([s, *table[s]]) + " |" for s in names]
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
