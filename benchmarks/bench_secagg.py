"""SecAgg+ cost per client and at the server vs number of clients and model size, alone and
through the round engine against plain FedAvg.

    python benchmarks/bench_secagg.py [--clients 10,50,100,200] [--dims 1000,100000]
                                      [--dropout 0.1] [--engine-clients 10,50,100,200]
                                      [--engine-hidden 16,1600] [--out benchmarks/results/secagg.md]

Each cell runs one full round in process (``fedkit.secure.secagg_local.run_local``: every
message goes through bytes) for SecAgg+ (k = ``graph.degree_for(n)``) and for Bonawitz et al.'s
complete graph (k = n - 1). Client time is the mean over finishing clients of quantisation plus the four
protocol steps; bytes are the mean per client, up and down, all stages. "plain" is FedAvg's
float32 upload (4 bytes a value) and the server's np.sum of the float32 updates. One extra row
per model size (at ``--dropout-clients``) drops ``--dropout`` of the clients before the masked input, which makes the
server rebuild those clients' pairwise masks. One core, one run per cell; all times are process CPU
time (steady under other load on a shared machine).

The second table runs whole rounds through the engine (``fedkit.runtime.server.run_round``
over the in-process Link: tasks, acceptance, the SecAggRound policy, the aggregator) for a
synthetic MLP at two sizes, each client training one step, so what differs from plain FedAvg is
secure aggregation's own cost: round CPU time, the clients' protocol seconds (quantise + keys +
shares + masking + unmasking, from ``clients.jsonl``'s ``encode_s`` and ``secagg_s``), the
server's (``secagg_server_s`` + acceptance) and bytes per client. The third runs the shipped
pair ``scenarios/secagg_digits.yaml`` / ``scenarios/quickstart.yaml`` (the same run in the
clear, 3 local epochs a round): accuracy, bytes and round time with real training. Writes
benchmarks/results/secagg.md.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # one core: set before numpy loads its BLAS

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fedkit import rng as frng  # noqa: E402
from fedkit.experiment import inprocess_link, run_scenario  # noqa: E402
from fedkit.runtime.server import run_round  # noqa: E402
from fedkit.scenario import load, validate  # noqa: E402
from fedkit.scenario.build import build  # noqa: E402
from fedkit.secure import field as fq  # noqa: E402
from fedkit.secure import secagg as sa  # noqa: E402
from fedkit.secure.secagg_local import run_local  # noqa: E402

CLIP = 1.0


def cell(n: int, d: int, complete: bool, dropout: float = 0.0) -> dict[str, float]:
    names = [f"c{i:03d}" for i in range(n)]
    spec = fq.FieldSpec.for_clients(n, CLIP)
    updates = {c: frng.rng(0, "bench-x", 0, c).normal(0, 0.1, d).astype(np.float32)
               for c in names}
    qtime, xs = 0.0, {}
    for c in names:
        t0 = time.process_time()
        xs[c] = fq.quantize(spec, updates[c], frng.rng(0, "bench-q", 0, c))
        qtime += time.process_time() - t0
    config = sa.SecAggConfig(dim=d, field=spec, complete=complete, seed=0)
    gone = names[: int(round(dropout * n))]
    run = run_local(config, 0, xs, drop={"masked-input": gone} if gone else None,
                    clock=time.process_time)
    t0 = time.process_time()
    total = fq.dequantize_sum(spec, run.aggregate.total, len(run.aggregate.survivors))
    decode_s = time.process_time() - t0
    want = np.sum([xs[c].astype(np.uint64) for c in run.aggregate.survivors], axis=0)
    assert np.array_equal(run.aggregate.total.astype(np.uint64), want), "sum is not exact"
    t0 = time.process_time()
    plain = np.sum([updates[c] for c in run.aggregate.survivors], axis=0, dtype=np.float32)
    plain_s = time.process_time() - t0
    assert np.max(np.abs(total - plain)) < 1e-3
    done = run.aggregate.survivors  # clients that ran every stage
    return {
        "k": run.aggregate.degree, "t": run.aggregate.threshold,
        "client_ms": 1e3 * (qtime / n + np.mean([run.client_s[c] for c in done])),
        "up_kb": np.mean([run.up_bytes[c] for c in done]) / 1e3,
        "down_kb": np.mean([run.down_bytes[c] for c in done]) / 1e3,
        "server_ms": 1e3 * (run.server_s + decode_s),
        "plain_kb": 4 * d / 1e3, "plain_server_ms": 1e3 * plain_s,
    }


ENGINE = ("plain", "SecAgg+", "Bonawitz")


def engine_cell(n: int, hidden: int, protocol: str) -> dict[str, float]:
    """One warm round through the engine (the second of two), in process."""
    raw = {
        "name": "bench-secagg", "seed": 0, "rounds": 2,
        "clients": {"count": n, "per_round": {"fraction": 1.0}},
        "data": {"dataset": {"name": "synthetic", "num_users": n, "max_samples": 100},
                 "partition": {"name": "natural"}},
        "model": {"name": "mlp", "hidden": [hidden]},
        "train": {"steps": 1, "batch_size": 16, "lr": 0.05},
        "evaluation": {"centralized": False},
        "output": {"plot": False, "checkpoint": False},
    }
    if protocol != "plain":
        raw["privacy"] = {"secagg": {"clip": 1.0, **({"complete": True} if protocol == "Bonawitz" else {})}}
    exp = build(validate(raw))
    link = inprocess_link(exp.clients)
    state, _ = run_round(exp.plan, link, exp.initial_state())  # warm-up: imports, first optimizer
    t0 = time.process_time()
    state, rec = run_round(exp.plan, link, state)
    cpu = time.process_time() - t0
    assert rec.status == "ok", rec.status
    client_s = sum(c.get("encode_s", 0.0) + c.get("secagg_s", 0.0) for c in rec.clients) / n
    server_s = rec.metrics.get("secagg_server_s", 0.0) + rec.decode_s
    return {
        "params": sum(p.size for p in state.params), "k": rec.metrics.get("secagg_degree", 0),
        "round_s": cpu, "client_ms": 1e3 * client_s, "server_ms": 1e3 * server_s,
        "up_kb": rec.bytes_up / n / 1e3, "down_kb": rec.bytes_down / n / 1e3,
    }


def engine_table(rows: list[tuple[str, int, int, dict[str, float]]]) -> str:
    plain = {(n, h): r for p, n, h, r in rows if p == "plain"}
    out = [
        "",
        "## Through the engine, against plain FedAvg",
        "",
        "One warm round (`run_round`, in-process Link) of a synthetic MLP, every client training "
        "one step; round = process CPU seconds of the whole round (all clients run in this "
        "process, one after another); client = mean protocol seconds per client (quantise, keys, "
        "shares, masking, unmasking: wall clock on the client side); server = the policy's "
        "protocol seconds plus acceptance (plain: decoding the updates); bytes per client, all "
        "stages. x plain = against the same round without secure aggregation.",
        "",
        "| protocol | n | params | k | round s | x plain | client ms | server ms | up KB | down KB "
        "| up x plain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for proto, n, h, r in rows:
        base = plain[n, h]
        k = "" if proto == "plain" else str(r["k"])
        out.append(
            f"| {proto} | {n} | {int(r['params']):,} | {k} | {r['round_s']:.2f} | "
            f"{r['round_s'] / base['round_s']:.2f}x | {r['client_ms']:.1f} | {r['server_ms']:.0f} | "
            f"{r['up_kb']:.1f} | {r['down_kb']:.1f} | {r['up_kb'] / base['up_kb']:.2f}x |")
    return "\n".join(out) + "\n"


SCENARIOS = Path(__file__).parents[1] / "scenarios"


def scenario_table() -> str:
    """The shipped secagg scenario against the same run in the clear."""
    out = [
        "",
        "## A shipped scenario with real training",
        "",
        "`scenarios/secagg_digits.yaml` against `scenarios/quickstart.yaml` (identical but for "
        "`privacy.secagg`): digits, 20 clients, 10 a round, MLP(64), 3 local epochs, 20 rounds, "
        "in-process. Round s = median wall seconds of rounds 2..20 (round 1 also loads torch's "
        "optimizer machinery).",
        "",
        "| run | final accuracy | best accuracy | bytes up | bytes down | median round s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("quickstart", "secagg_digits"):
            summary = run_scenario(load(SCENARIOS / f"{name}.yaml"), Path(tmp) / name)
            rows = [json.loads(line) for line in (Path(tmp) / name / "metrics.jsonl").read_text().splitlines()]
            wall = float(np.median([r["wall_s"] for r in rows[1:]]))
            out.append(f"| {name} | {summary['final_accuracy']:.4f} | {summary['best_accuracy']:.4f} | "
                       f"{summary['total_bytes_up']:,} | {summary['total_bytes_down']:,} | {wall:.2f} |")
            print(f"scenario {name}: {summary['final_accuracy']:.4f}", flush=True)
    return "\n".join(out) + "\n"


def conditions() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (f"Conditions: {os.cpu_count()} CPUs shared with other jobs, load average "
            f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) at the end of the run; "
            "process CPU times are steady under such load, wall-clock ones (client ms in the "
            "engine table) are not.")


def table(rows: list[tuple[str, int, int, float, dict[str, float]]]) -> str:
    out = [
        "# Secure aggregation cost: SecAgg+ vs Bonawitz (complete graph)",
        "",
        f"numpy {np.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        "one core, one round per cell, `python benchmarks/bench_secagg.py`; times are "
        "process CPU time.",
        "Client = mean over the clients that finished (quantise + 4 protocol steps); bytes are per client, all four "
        "stages; server = receive + close of every stage + decode. Plain = FedAvg float32 "
        "upload and np.sum. Every cell checks that the unmasked sum equals the plain sum of "
        "the quantised updates exactly.",
        "",
        "| protocol | n | params | drop | k | t | client ms | up KB | down KB | up / plain "
        "| server ms | plain server ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for proto, n, d, drop, r in rows:
        out.append(
            f"| {proto} | {n} | {d:,} | {drop:.0%} | {r['k']} | {r['t']} | "
            f"{r['client_ms']:.1f} | {r['up_kb']:.1f} | {r['down_kb']:.1f} | "
            f"{r['up_kb'] / r['plain_kb']:.2f}x | {r['server_ms']:.0f} | "
            f"{r['plain_server_ms']:.1f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="10,50,100,200")
    ap.add_argument("--dims", default="1000,100000")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--dropout-clients", type=int, default=100)
    ap.add_argument("--engine-clients", default="10,50,100,200")
    ap.add_argument("--engine-hidden", default="16,1600", help="MLP widths (1.1k and 114k params)")
    ap.add_argument("--no-scenarios", action="store_true", help="skip the shipped-scenario table")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "secagg.md"))
    args = ap.parse_args()
    ns = [int(v) for v in args.clients.split(",")]
    ds = [int(v) for v in args.dims.split(",")]
    rows = []
    for d in ds:
        for proto, complete in (("SecAgg+", False), ("Bonawitz", True)):
            for n in ns:
                t0 = time.perf_counter()
                rows.append((proto, n, d, 0.0, cell(n, d, complete)))
                print(f"{proto} n={n} d={d}: {time.perf_counter() - t0:.1f}s", flush=True)
        if args.dropout > 0:
            n = args.dropout_clients
            for proto, complete in (("SecAgg+", False), ("Bonawitz", True)):
                rows.append((proto, n, d, args.dropout, cell(n, d, complete, args.dropout)))
                print(f"{proto} n={n} d={d} drop={args.dropout}", flush=True)
    torch.set_num_threads(1)
    erows = []
    for h in (int(v) for v in args.engine_hidden.split(",") if v):
        for n in (int(v) for v in args.engine_clients.split(",") if v):
            for proto in ENGINE:
                t0 = time.perf_counter()
                erows.append((proto, n, h, engine_cell(n, h, proto)))
                print(f"engine {proto} n={n} hidden={h}: {time.perf_counter() - t0:.1f}s", flush=True)
    text = table(rows) + (engine_table(erows) if erows else "")
    text += ("" if args.no_scenarios else scenario_table()) + "\n" + conditions() + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
