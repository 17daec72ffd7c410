"""SecAgg+ cost per client and at the server vs number of clients and model size.

    python benchmarks/bench_secagg.py [--clients 10,50,100,200] [--dims 1000,100000]
                                      [--dropout 0.1] [--out benchmarks/results/secagg.md]

Each cell runs one full round in process (``fedkit.secure.secagg_local.run_local``: every
message goes through bytes) for SecAgg+ (k = ``graph.degree_for(n)``) and for Bonawitz et al.'s
complete graph (k = n - 1). Client time is the mean over finishing clients of quantisation plus the four
protocol steps; bytes are the mean per client, up and down, all stages. "plain" is FedAvg's
float32 upload (4 bytes a value) and the server's np.sum of the float32 updates. One extra row
per model size (at ``--dropout-clients``) drops ``--dropout`` of the clients before the masked input, which makes the
server rebuild those clients' pairwise masks. One core, one run per cell; all times are process CPU
time (steady under other load on a shared machine). Writes benchmarks/results/secagg.md.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # one core: set before numpy loads its BLAS

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from fedkit import rng as frng  # noqa: E402
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
    text = table(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
