"""fedkit vs Flower's simulation engine vs the plain-torch floor, on the ``make bench-training``
workloads (benchmarks/bench_training.py): Synthetic(1,1), logistic regression, 100 clients,
10 per round x 20 rounds and 100 per round x 5 rounds, 1 local epoch, batch 10, SGD lr 0.01.

Sides, each run in a fresh process:

- floor: bench_training's plain torch loop (same clients, same data, same batch order);
- fedkit: ``fedkit run`` in-process, sequentially; and each executor this fedkit has
  (``execution.kind`` pool / ray / stacked, 2 workers), when the scenario schema knows them;
- flower: ``fedkit run --engine flower``: Flower's simulation engine on a local Ray with 2
  workers (1 CPU each), the ClientApp training with fedkit's client runtime, so its parameters
  are fedkit's bit for bit (the table says whether they were).

wall = the workload after imports (for flower also Ray's start, node registration, each worker
building the data and Ray's shutdown); rounds = the sum of the per-round wall times, the steady
state; peak memory = the largest total, over every process of the run (Ray's raylet, GCS and
workers included), of PSS (proportional set size: a page shared by k processes counts 1/k in
each), sampled from /proc every 0.2 s. Wall and rounds are medians over --repeats runs, memory
the largest. The header records the machine's load, since these machines are shared.

    python benchmarks/bench_flower.py [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench_training import FLOOR, SCENARIO, VARIANTS  # noqa: E402

FEDKIT = r"""
import json, sys, tempfile, time
from fedkit.experiment import run_scenario
from fedkit.report.run_dir import read_metrics
from fedkit.scenario import load
s = load(sys.argv[1], sys.argv[2:] + ["output.plot=false", "evaluation.every=1000"])
with tempfile.TemporaryDirectory() as d:
    t1 = time.perf_counter()
    summary = run_scenario(s, d)
    t2 = time.perf_counter()
    rows = read_metrics(d)
print(json.dumps({"wall_s": t2 - t1, "rounds_s": sum(r["wall_s"] for r in rows),
                  "acc": summary["final_accuracy"], "sha": summary["params_sha256"]}))
"""

FLOWER = r"""
import json, os, sys, tempfile, time
from fedkit.compat.flower.engine import run_flower
from fedkit.report.run_dir import read_metrics
from fedkit.scenario import load
s = load(sys.argv[1], sys.argv[2:] + ["output.plot=false", "evaluation.every=1000"])
with tempfile.TemporaryDirectory() as d:
    t1 = time.perf_counter()
    summary = run_flower(s, d, workers=int(os.environ["BENCH_WORKERS"]))
    t2 = time.perf_counter()
    rows = read_metrics(d)
print(json.dumps({"wall_s": t2 - t1, "rounds_s": sum(r["wall_s"] for r in rows),
                  "acc": summary["final_accuracy"], "sha": summary["params_sha256"]}))
"""


def sides(workers: int) -> dict[str, tuple[str, list[str]]]:
    """Side name -> (program, extra scenario overrides)."""
    from fedkit.scenario.schema import Scenario

    out = {"floor (plain torch)": (FLOOR, []), "fedkit (sequential)": (FEDKIT, [])}
    if "execution" in Scenario.model_fields:  # the pluggable executors, where this fedkit has them
        out |= {
            f"fedkit pool ({workers})": (FEDKIT, ["execution.kind=pool", f"execution.workers={workers}"]),
            f"fedkit ray ({workers})": (FEDKIT, ["execution.kind=ray", f"execution.workers={workers}"]),
            "fedkit stacked": (FEDKIT, ["execution.kind=stacked"]),
        }
    out[f"flower engine (ray, {workers})"] = (FLOWER, [])
    return out


# --- memory of a process tree ----------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(d))
    return out


def _tree(root: int) -> list[int]:
    kids, out, stack = _children(), [], [root]
    while stack:
        p = stack.pop()
        out.append(p)
        stack += kids.get(p, [])
    return out


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakMemory:
    """Samples the summed PSS of a process and all its descendants until stopped."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        self.pid, self.every_s = pid, every_s
        self.peak_kb, self.procs = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = _tree(self.pid)
            total = sum(_pss_kb(p) for p in pids)
            if total > self.peak_kb:
                self.peak_kb, self.procs = total, len(pids)
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _run(code: str, overrides: list[str], workers: int) -> dict[str, Any]:
    env = os.environ | {"BENCH_WORKERS": str(workers), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(SCENARIO), *overrides],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )
    mem = PeakMemory(proc.pid)
    out, err = proc.communicate()
    mem.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"side failed (exit {proc.returncode}):\n{err[-3000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    return res | {"peak_mb": mem.peak_kb / 1024, "procs": mem.procs}


def _versions() -> str:
    import numpy
    import torch

    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}", f"numpy {numpy.__version__}"]
    for mod in ("flwr", "ray"):
        try:
            parts.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            parts.append(f"{mod} not installed")
    return ", ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="Ray workers / pool processes")
    ap.add_argument("--out", default=str(HERE / "results" / "flower.md"))
    args = ap.parse_args()
    load0 = os.getloadavg()
    t0 = time.time()
    table = [
        "| workload | side | wall s | rounds s | wall / floor | peak PSS MB (all processes) | processes | final acc | params = fedkit's |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for workload, over in VARIANTS.items():
        floor_wall, ref_sha = None, None
        for side, (code, extra) in sides(args.workers).items():
            runs = [_run(code, over + extra, args.workers) for _ in range(args.repeats)]
            wall = statistics.median(r["wall_s"] for r in runs)
            rounds = statistics.median(r.get("rounds_s", r["wall_s"]) for r in runs)
            peak = max(r["peak_mb"] for r in runs)
            procs = max(r["procs"] for r in runs)
            acc, sha = runs[0].get("acc"), runs[0].get("sha")
            floor_wall = floor_wall or wall
            ref_sha = ref_sha or sha
            same = "-" if sha is None else ("yes" if sha == ref_sha else "no")
            if same == "no" and "stacked" in side:
                same = "no: equal to float tolerance, by design"
            table.append(
                f"| {workload} | {side} | {wall:.2f} | {rounds:.2f} | {wall / floor_wall:.2f}x | {peak:.0f} | "
                f"{procs} | {'-' if acc is None else f'{acc:.4f}'} | {same} |"
            )
            print(table[-1], flush=True)
    load1 = os.getloadavg()
    lines = [
        "# fedkit vs Flower's simulation engine vs the plain-torch floor",
        "",
        "Workloads of `make bench-training` (Synthetic(1,1), logistic regression, 1 local epoch, batch 10, "
        "SGD lr 0.01). Each side in a fresh process; medians of "
        f"{args.repeats} run(s); see benchmarks/bench_flower.py for what wall, rounds and memory measure.",
        "",
        f"Conditions: {datetime.datetime.fromtimestamp(t0).isoformat(timespec='minutes')}, "
        f"{os.cpu_count()} CPUs, load average {load0[0]:.1f} at the start and {load1[0]:.1f} at the end "
        f"(a shared machine: absolute times are noisy, compare within a row group), {_versions()}.",
        "",
        "Command: `make bench-flower` (`python benchmarks/bench_flower.py --repeats "
        f"{args.repeats} --workers {args.workers}`).",
        "",
        *table,
    ]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
