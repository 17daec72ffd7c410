"""10 clients x SplitFed V1: wall time in-process vs ``--mode processes`` (gRPC over loopback TLS).

    python benchmarks/bench_split_modes.py [--rounds 5] [--workers 2 10] [--quick]

Runs ``scenarios/split_splitfed_v1.yaml`` (digits, the reference CNN cut after conv1, 10 clients,
2 local epochs of batch 16 per round: about 90 split steps per round, 16x8x8 float32 activations
up and gradients down each) for ``--rounds`` rounds, in-process and as a server process plus a pool
of client processes (``--workers``: how many client processes hold the 10 clients; 10 is one per
client). Each processes run is checked against the in-process one: the same final parameters (both
parts) and the same bytes per category. Wall time is the driver's, start to summary (processes:
certificates, process start-up, imports and connection included; "start-up" is the part before
the server's first round began); CPU time is this process's plus every waited child's (user +
system), so it shows what the extra processes cost beyond waiting. The machine's load is recorded.

Writes benchmarks/results/split_modes.md and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedkit.experiment import run_scenario  # noqa: E402
from fedkit.scenario import load  # noqa: E402

SCENARIO = ROOT / "scenarios" / "split_splitfed_v1.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "split_modes.md"


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _bytes(run: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("bytes_")} for r in rows]


def measure(rounds: int, mode: str, workers: int | None, out: Path) -> dict[str, Any]:
    s = load(SCENARIO, [f"rounds={rounds}", "output.plot=false"])
    load0, cpu0, t0 = os.getloadavg()[0], _cpu(), time.perf_counter()
    summary = run_scenario(s, out, mode=mode, workers=workers)
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    engine = rows[-1]["elapsed_s"]  # the server's clock, from its start of round 1
    per_round = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(rows, rows[1:], strict=False)]
    return {
        "mode": mode, "workers": workers, "rounds": len(rows), "wall_s": wall, "cpu_s": cpu,
        "startup_s": max(0.0, wall - engine), "round_s": sorted(per_round)[len(per_round) // 2] if per_round else engine,
        "load": (load0 + os.getloadavg()[0]) / 2, "summary": summary, "bytes": _bytes(out),
        "accuracy": summary["final_accuracy"],
    }


def table(rows: list[dict[str, Any]], load: tuple[float, float, float], rounds: int) -> str:
    base = rows[0]
    lines = [
        "# 10 clients x SplitFed V1: in-process vs `--mode processes`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) at the start. "
        f"Scenario `scenarios/split_splitfed_v1.yaml` for {rounds} rounds (each round: 10 clients x 2 epochs, "
        f"{base['bytes'][0]['bytes_activations_up'] / 1e6:.1f} MB of activations up and as many gradient bytes down). "
        "Processes: one server process and a pool of client processes over loopback TLS "
        "(`fedkit.launch.run_processes`). `python benchmarks/bench_split_modes.py` regenerates this file.",
        "",
        "| mode | client processes | rounds | wall s | start-up s | median s/round | vs in-process | CPU s | "
        "load (avg during) | params identical | bytes identical |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = r is base or (
            r["summary"]["params_sha256"] == base["summary"]["params_sha256"]
            and r["summary"]["server_params_sha256"] == base["summary"]["server_params_sha256"]
        )
        lines.append(
            f"| {r['mode']} | {r['workers'] or '-'} | {r['rounds']} | {r['wall_s']:.1f} | {r['startup_s']:.1f} | "
            f"{r['round_s']:.2f} | {r['wall_s'] / base['wall_s']:.2f}x | {r['cpu_s']:.1f} | {r['load']:.1f} | "
            f"{'yes' if same else 'NO'} | {'yes' if r['bytes'] == base['bytes'] else 'NO'} |"
        )
    lines += [
        "",
        "Notes: in-process, the ten clients run one after another in the driver (the in-process Link "
        "simulates their parallelism on its clock); in processes they train concurrently, so on a machine "
        "with more cores than client processes a round can take less wall time than in-process, and on a "
        "loaded 2-CPU machine it cannot: every split step adds two protobuf frames, two TLS records and two "
        "thread hops per side, and the client processes compete for the same cores. Start-up (certificates, "
        "spawning Python + torch in each process, connecting) is paid once per run.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 10], help="client processes per processes run")
    ap.add_argument("--quick", action="store_true", help="2 rounds, one pool of 2; prints, writes nothing")
    args = ap.parse_args()
    rounds, workers = (2, [2]) if args.quick else (args.rounds, args.workers)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-split-modes-") as tmp:
        rows = [measure(rounds, "inprocess", None, Path(tmp) / "inprocess")]
        for w in workers:
            rows.append(measure(rounds, "processes", w, Path(tmp) / f"processes-{w}"))
    md = table(rows, load, rounds)
    print(md)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(md)


if __name__ == "__main__":
    main()
