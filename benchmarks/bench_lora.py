"""LoRA aggregation variants on a pre-trained MLP: accuracy, bytes, DP-LoRA and sparse LoRA.

    python benchmarks/bench_lora.py [--part variants,dp,sparse] [--seeds 2] [--rounds 10]

The base (fedkit ``mlp``, hidden 32) is pre-trained centrally on digits 0-4 only; LoRA adapters
(peft, r=4, alpha=8, on both Linear layers) are then fine-tuned federatedly on all ten digits:
``--clients`` clients (Dirichlet 0.5), every client every round, ``--steps`` Adam steps of 32
samples per round. Each variant runs through ``fedkit.aggregation.lora.LoraAggregator`` as the
engine calls it (deltas in; base offsets, per-client ranks and personal B from its methods), in
a small in-process harness (the engine's PEFT wiring is another branch).

* ``variants``: test accuracy of the global model (FedSA-LoRA: mean personalised accuracy on
  each client's 20% held-out samples, also reported for all), payload bytes per client and
  round (``wire_bytes``), against full fine-tuning by FedAvg and the base alone. FlexLoRA:
  ranks 1/2/4 by client thirds.
* ``dp``: DP-LoRA (central DP-FedAvg of the uplink tensors, ``LoraDP``) for FedIT, FFA-LoRA and
  FedSVD at the same (epsilon, delta=1e-5) over the run (RDP accountant, q = 1), clip norm the
  median norm of the variant's non-private round-1 updates; ``--dp-clients`` clients (central
  DP noise falls as 1/n, so it needs many).
* ``sparse``: the uplink through ``ef:topk(ratio=0.1)|quant(bits=8)`` (CELLM's idea: top-k with
  error feedback, via fedkit's codec pipeline) against dense, for FedIT and FFA-LoRA.

Writes benchmarks/results/lora.md.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import peft
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's fedkit

from fedkit.aggregation.lora import LoraDP, make_lora_aggregator, personalise, wire_bytes
from fedkit.compression import decode, make
from fedkit.data.datasets import load_digits
from fedkit.data.partition import partition
from fedkit.models.registry import mlp
from fedkit.models.train import keyed_torch
from fedkit.rng import rng, seed_int
from fedkit.secure.accountant import noise_for_epsilon
from fedkit.types import Update

ALPHA, RANK, TARGETS, LR = 8, 4, ["1", "3"], 0.02
LR_ONE_FACTOR = {"ffa": 0.05, "fedsvd": 0.05}  # one trained factor wants a larger lr (FFA-LoRA)
OUT = Path(__file__).parent / "results" / "lora.md"


def world(seed: int, clients: int) -> dict[str, Any]:
    ds = load_digits(seed)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    with keyed_torch(seed_int(seed, "base")):
        base = mlp((64,), 10, hidden=(32,))
    src = torch.nonzero(y < 5).squeeze(1)
    opt = torch.optim.Adam(base.parameters(), lr=0.01)
    g = rng(seed, "pretrain")
    for _ in range(150):
        idx = src[torch.from_numpy(g.integers(0, len(src), 64))]
        opt.zero_grad()
        F.cross_entropy(base(x[idx]), y[idx]).backward()
        opt.step()
    names = [f"c{i}" for i in range(clients)]
    split = {}
    for c, p in zip(names, partition("dirichlet", ds.y_train, clients, seed, alpha=0.5), strict=True):
        p = rng(seed, "holdout", c).permutation(p)
        cut = max(1, int(0.8 * len(p)))
        split[c] = (torch.from_numpy(p[:cut]), torch.from_numpy(p[cut:]))
    return {"seed": seed, "base": base, "x": x, "y": y, "split": split, "clients": names,
            "test": (torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test))}


class Models:
    """One peft model per rank over a private copy of the base; adapters loaded by name."""

    def __init__(self, base: torch.nn.Module, seed: int) -> None:
        self.base, self.seed, self.cache = base, seed, {}

    def get(self, r: int) -> torch.nn.Module:
        if r not in self.cache:
            with keyed_torch(seed_int(self.seed, "lora-init", r)):
                cfg = peft.LoraConfig(r=r, lora_alpha=ALPHA, target_modules=TARGETS)
                self.cache[r] = peft.get_peft_model(copy.deepcopy(self.base), cfg)
        return self.cache[r]

    @staticmethod
    def names(m: torch.nn.Module) -> list[str]:
        return [n for n, _ in m.named_parameters() if "lora_" in n]

    def load(self, r: int, params: list[np.ndarray], offsets: dict[str, np.ndarray],
             trainable: set[str] | None = None) -> torch.nn.Module:
        m = self.get(r)
        named = dict(m.named_parameters())
        with torch.no_grad():
            for n, a in zip(self.names(m), params, strict=True):
                named[n].copy_(torch.from_numpy(np.asarray(a, dtype=np.float32)))
                named[n].requires_grad_(trainable is None or n in trainable)
            for t in TARGETS:
                key = f"base_model.model.{t}"
                w0 = self.base[int(t)].weight.detach()
                off = offsets.get(key)
                m.get_submodule(key).base_layer.weight.copy_(
                    w0 if off is None else w0 + torch.from_numpy(off.astype(np.float32)))
        return m

    def params(self, m: torch.nn.Module) -> list[np.ndarray]:
        named = dict(m.named_parameters())
        return [named[n].detach().numpy().copy() for n in self.names(m)]


def train(m: torch.nn.Module, w: dict[str, Any], idx: torch.Tensor, rnd: int, client: str,
          steps: int, lr: float) -> None:
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr)
    g = rng(w["seed"], "batches", rnd, client)
    m.train()
    for _ in range(steps):
        b = idx[torch.from_numpy(g.integers(0, len(idx), 32))]
        opt.zero_grad()
        F.cross_entropy(m(w["x"][b]), w["y"][b]).backward()
        opt.step()


@torch.no_grad()
def acc(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    m.eval()
    return float((m(x).argmax(1) == y).float().mean())


def run_lora(w: dict[str, Any], variant: str, rounds: int, steps: int, *, ranks: dict[str, int] | None = None,
             dp: LoraDP | None = None, uplink: str = "identity") -> dict[str, float]:
    h = Models(w["base"], w["seed"])
    m0 = h.get(RANK)
    names, init = h.names(m0), h.params(m0)
    agg = make_lora_aggregator(variant, names, [a.shape for a in init], alpha=ALPHA, seed=w["seed"],
                               ranks=ranks, dp=dp)
    trainable = set(agg.variant.trainable(names))
    up_names = set(agg.variant.uplink(names))
    state, params = agg.init(init), init
    own = {c: init for c in w["clients"]}
    codec = make(uplink)
    ef: dict[str, Any] = {}
    up_bytes = down_bytes = 0
    norms: list[float] = []
    lr = LR_ONE_FACTOR.get(variant, LR)
    for rnd in range(rounds):
        offsets = agg.base_offsets(state)
        ups = []
        for c in w["clients"]:
            sent = agg.for_client(params, c)
            start = personalise(agg.layout, sent, own[c]) if agg.variant.personal else sent
            m = h.load(agg.rank_of(c), start, offsets, trainable)
            train(m, w, w["split"][c][0], rnd, c, steps, lr)
            local = h.params(m)
            own[c] = local
            delta = [a - s for a, s in zip(local, sent, strict=True)]
            norms.append(math.sqrt(sum(float(np.sum(d.astype(np.float64) ** 2)) for d in delta)))
            if uplink != "identity":  # only the uplink tensors go through the codec
                ks = [k for k, n in enumerate(names) if n in up_names]
                part = [delta[k] for k in ks]
                st = ef.get(c) or codec.init(part)
                ef[c], enc = codec.encode(st, part, rng(w["seed"], "codec", rnd, c))
                for k, a in zip(ks, decode(enc), strict=True):
                    delta[k] = a.astype(delta[k].dtype)
                up_bytes += len(enc.data)
            ups.append(Update(c, delta, len(w["split"][c][0])))
        wb = wire_bytes(agg, w["clients"])
        down_bytes += sum(v["down"] for v in wb.values())
        if uplink == "identity":
            up_bytes += sum(v["up"] for v in wb.values())
        state, params = agg.step(state, params, ups)
    offsets = agg.base_offsets(state)
    per = []
    for c in w["clients"]:
        mine = personalise(agg.layout, params, own[c]) if agg.variant.personal else params
        hold = w["split"][c][1]
        per.append(acc(h.load(RANK, mine, offsets), w["x"][hold], w["y"][hold]))
    n, r = len(w["clients"]), rounds
    return {"acc": acc(h.load(RANK, params, offsets), *w["test"]), "personal": float(np.mean(per)),
            "up": up_bytes / (n * r), "down": down_bytes / (n * r),
            "total_mb": (up_bytes + down_bytes) / 1e6, "median_norm": statistics.median(norms[:n])}


def run_full(w: dict[str, Any], rounds: int, steps: int) -> dict[str, float]:
    """Full fine-tuning by FedAvg (every base parameter trains and travels)."""
    glob = copy.deepcopy(w["base"])
    gp = [p.detach().clone() for p in glob.parameters()]
    nbytes = sum(p.numel() * 4 for p in gp)
    for rnd in range(rounds):
        acc_p = [torch.zeros_like(p) for p in gp]
        total = 0
        for c in w["clients"]:
            m = copy.deepcopy(w["base"])
            with torch.no_grad():
                for p, q in zip(m.parameters(), gp, strict=True):
                    p.copy_(q)
            train(m, w, w["split"][c][0], rnd, c, steps, 0.01)
            k = len(w["split"][c][0])
            total += k
            for a, p in zip(acc_p, m.parameters(), strict=True):
                a += k * p.detach()
        gp = [a / total for a in acc_p]
    with torch.no_grad():
        for p, q in zip(glob.parameters(), gp, strict=True):
            p.copy_(q)
    per = [acc(glob, w["x"][w["split"][c][1]], w["y"][w["split"][c][1]]) for c in w["clients"]]
    return {"acc": acc(glob, *w["test"]), "personal": float(np.mean(per)), "up": nbytes, "down": nbytes,
            "total_mb": 2 * nbytes * rounds * len(w["clients"]) / 1e6}


def mean_sd(xs: list[float]) -> str:
    if all(math.isnan(x) for x in xs):
        return "-"
    return f"{np.mean(xs):.3f} ± {np.std(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def part_variants(args: argparse.Namespace) -> list[str]:
    rows: dict[str, list[dict[str, float]]] = {}
    for seed in range(args.seeds):
        w = world(seed, args.clients)
        h = Models(w["base"], seed)
        base = h.load(RANK, h.params(h.get(RANK)), {})  # B = 0: the adapted model is the base
        rows.setdefault("base (no fine-tuning)", []).append(
            {"acc": acc(base, *w["test"]), "personal": float("nan"), "up": 0, "down": 0, "total_mb": 0})
        rows.setdefault("full fine-tuning (FedAvg)", []).append(run_full(w, args.rounds, args.steps))
        third = len(w["clients"]) // 3
        flex = {c: (1 if i < third else 2 if i < 2 * third else 4) for i, c in enumerate(w["clients"])}
        for v in ("fedit", "ffa", "fedsa", "fedex", "flora", "flexlora", "fedsvd"):
            t = time.perf_counter()
            rows.setdefault(v, []).append(
                run_lora(w, v, args.rounds, args.steps, ranks=flex if v == "flexlora" else None))
            print(f"seed {seed} {v}: {rows[v][-1]['acc']:.3f} ({time.perf_counter() - t:.1f}s)", flush=True)
    out = ["## Variants", "",
           f"{args.clients} clients (Dirichlet 0.5), {args.rounds} rounds x {args.steps} local steps, "
           f"{args.seeds} seed(s); bytes are tensor payload per client per round (no framing).", "",
           "| method | test acc (global) | personalised acc | up B/client/round | down B/client/round | total MB |",
           "|---|---|---|---|---|---|"]
    for name, rs in rows.items():
        out.append(f"| {name} | {mean_sd([r['acc'] for r in rs])} | {mean_sd([r['personal'] for r in rs])} | "
                   f"{np.mean([r['up'] for r in rs]):,.0f} | {np.mean([r['down'] for r in rs]):,.0f} | "
                   f"{np.mean([r['total_mb'] for r in rs]):.2f} |")
    return out


def part_dp(args: argparse.Namespace) -> list[str]:
    args = argparse.Namespace(**{**vars(args), "clients": args.dp_clients})
    out = ["## DP-LoRA: accuracy against epsilon (delta = 1e-5)", "",
           f"Central DP-FedAvg of the uplink tensors, all {args.clients} clients every round "
           f"(q = 1), {args.rounds} rounds; z from the RDP accountant; clip C = median norm of "
           "the variant's non-private first-round updates. Noise goes only on what travels: "
           "FFA-LoRA and FedSVD noise B alone.", "",
           "| variant | C | " + " | ".join(f"eps={e:g}" if e < math.inf else "no DP" for e in args.eps) + " |",
           "|---|---|" + "---|" * len(args.eps)]
    for v in ("fedit", "ffa", "fedsvd"):
        cells: dict[float, list[float]] = {e: [] for e in args.eps}
        clip = []
        for seed in range(args.seeds):
            w = world(seed, args.clients)
            c = run_lora(w, v, 1, args.steps)["median_norm"]
            clip.append(c)
            for e in args.eps:
                dp = None
                if e < math.inf:
                    z = noise_for_epsilon(e, 1.0, args.rounds, 1e-5)
                    dp = LoraDP(clip_norm=c, noise_multiplier=z, expected_clients=args.clients)
                cells[e].append(run_lora(w, v, args.rounds, args.steps, dp=dp)["acc"])
            print(f"dp seed {seed} {v}: {[round(cells[e][-1], 3) for e in args.eps]}", flush=True)
        zs = " / ".join(f"{noise_for_epsilon(e, 1.0, args.rounds, 1e-5):.2f}" for e in args.eps if e < math.inf)
        out.append(f"| {v} | {np.mean(clip):.3f} | " + " | ".join(mean_sd(cells[e]) for e in args.eps) + " |")
    out += ["", f"Noise multipliers z for the finite epsilons: {zs}."]
    return out


def part_sparse(args: argparse.Namespace) -> list[str]:
    spec = "ef:topk(ratio=0.1)|quant(bits=8)"
    out = ["## Sparse LoRA (CELLM's idea) through the codec pipeline", "",
           f"Uplink `{spec}` on the uplink tensors, error feedback per client; bytes are the "
           "codec's payload per client per round.", "",
           "| variant | uplink | test acc | up B/client/round |", "|---|---|---|---|"]
    for v in ("fedit", "ffa"):
        for up in ("identity", spec):
            rs = [run_lora(world(seed, args.clients), v, args.rounds, args.steps, uplink=up)
                  for seed in range(args.seeds)]
            cell = up.replace("|", "\\|")
            out.append(f"| {v} | `{cell}` | {mean_sd([r['acc'] for r in rs])} | {np.mean([r['up'] for r in rs]):,.0f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", default="variants,dp,sparse")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dp-clients", type=int, default=50, help="clients in the dp part (DP needs many)")
    ap.add_argument("--eps", type=lambda s: [float(x) for x in s.split(",")], default=[math.inf, 8.0, 2.0])
    args = ap.parse_args()
    torch.set_num_threads(1)  # a 32-wide MLP: more threads only contend
    t0 = time.perf_counter()
    lines = ["# LoRA aggregation variants (benchmarks/bench_lora.py)", "",
             f"`python benchmarks/bench_lora.py --part {args.part} --seeds {args.seeds} --clients {args.clients} "
             f"--rounds {args.rounds} --steps {args.steps} --dp-clients {args.dp_clients}`; {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}, peft {peft.__version__}.", "",
             "Base: fedkit `mlp` (hidden 32) pre-trained on digits 0-4; LoRA r=4, alpha=8 on both Linear "
             "layers, fine-tuned federatedly on digits 0-9.", ""]
    parts = {"variants": part_variants, "dp": part_dp, "sparse": part_sparse}
    for p in args.part.split(","):
        lines += parts[p](args) + [""]
    lines.append(f"Wall time {time.perf_counter() - t0:.0f} s.")
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
