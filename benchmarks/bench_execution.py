"""Client executors (fedkit/sim/stacked.py, fedkit/sim/pool.py, fedkit/compat/ray.py) against
the sequential loop and the no-framework floor of bench_training.py.

1. ``stacked`` on the W1 workloads of bench_training.py (Synthetic(1,1), logreg, 100 clients,
   1 epoch, batch 10, lr 0.01; 10 per round x 20 rounds and 100 per round x 5 rounds) against the
   plain torch floor. Targets: <= 0.6x and <= 0.4x the floor's wall time. The critical-path bound
   is the share of the steps on the longest client of each round (clients are sequential chains
   of steps): what lock-step batching at the floor's cost per step could reach.
2. ``pool`` with 2 workers against sequential on a training-dominated workload (digits, the
   reference CNN, 20 clients, 10 per round, 20 local epochs, 40 rounds). Target: <= 0.65x the
   wall time. Reported apart: set-up (the run's start to round 1: data, model, worker start-up),
   round 1 (first-use costs), the steady state (median of rounds 2..N) and its 2-worker bound.
3. ``ray`` on a local 2-worker Ray: per-round overhead beyond compute (W1), and 1,000 clients with
   100 per round run to completion, with the peak memory of all processes (the driver, the Ray
   daemons and the actors; sampled from /proc every 0.2 s).

Every run is a fresh process; wall = the run after imports (data generation, worker start-up,
training, aggregation, the final evaluation). Medians of --repeats runs, interleaved.

    python benchmarks/bench_execution.py [--repeats 3] [--only stacked,pool,ray]   (--only pool
    reruns that section of results/execution.md and keeps the others)
"""

from __future__ import annotations

import argparse
import json
import math
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
from bench_training import FLOOR, SCENARIO, VARIANTS  # noqa: E402

POOL_WORKLOAD = {
    "name": "digits CNN(16,32), 20 clients, 10 per round, 20 epochs, batch 16, 40 rounds",
    "scenario": ROOT / "scenarios" / "quickstart.yaml",
    "overrides": ["model={name: cnn, channels: [16, 32]}", "clients.per_round={count: 10}",
                  "train.epochs=20", "rounds=40"],
}
RAY_W1 = ["clients.per_round.count=10", "rounds=20"]
RAY_1000 = {
    "name": "Synthetic(1,1) logreg, 1,000 clients, 100 per round, 1 epoch, 10 rounds",
    "overrides": ["clients.count=1000", "data.dataset.num_users=1000", "clients.per_round.count=100",
                  "rounds=10"],
}


# ------------------------------------------------------------------------------- memory


def _tree(root: int) -> list[int]:
    """``root`` and every descendant process (from /proc)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [root], [root]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def _mem_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of one process in MB; PSS shares shared pages (Ray's object store) fairly."""
    rss = pss = 0.0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, pss


def _kind(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    if "ray::" in cmd or "default_worker.py" in cmd:
        return "ray workers"
    if "fedkit.sim.pool" in cmd:
        return "pool workers"
    if "ray" in cmd:
        return "ray daemons"
    return "other"


class PeakMemory:
    """Samples the memory of this process and all its descendants in a thread."""

    def __init__(self, every_s: float = 0.2):
        self.every_s = every_s
        self.peak_rss = self.peak_pss = 0.0
        self.peak_procs = 0
        self.at_peak: dict[str, float] = {}  # PSS MB by kind of process, at the peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> tuple[float, float, int]:
        pids = _tree(os.getpid())
        mem = [_mem_mb(p) for p in pids]
        rss, pss = sum(m[0] for m in mem), sum(m[1] for m in mem)
        if pss > self.peak_pss:
            self.at_peak = {}
            for p, m in zip(pids, mem, strict=True):
                kind = "driver" if p == os.getpid() else _kind(p)
                self.at_peak[kind] = self.at_peak.get(kind, 0.0) + m[1]
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, len(pids))
        return rss, pss, len(pids)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# ------------------------------------------------------------------------ one fedkit run


def child(scenario: str, overrides: list[str]) -> dict[str, Any]:
    """One fedkit run in this process (called in a fresh process by the parent)."""
    import tempfile

    from fedkit.experiment import run_scenario
    from fedkit.scenario import load

    s = load(scenario, [*overrides, "output.plot=false", "output.checkpoint=false", "evaluation.every=1000"])
    rounds: list[dict[str, Any]] = []
    with PeakMemory() as mem, tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()

        def on_round(row: Any) -> None:
            rss, pss, procs = mem.sample()
            rounds.append({"wall_s": row["wall_s"], "end_s": time.perf_counter() - t0,
                           "rss_mb": rss, "pss_mb": pss, "procs": procs})

        summary = run_scenario(s, d, on_round=on_round)
        wall = time.perf_counter() - t0
        compute = [_round_compute(Path(d) / "clients.jsonl", r) for r in range(1, s.rounds + 1)]
    return {"wall_s": wall, "acc": summary["final_accuracy"], "params": summary["params_sha256"],
            "setup_s": rounds[0]["end_s"] - rounds[0]["wall_s"] if rounds else wall, "rounds": rounds, "compute": compute,
            "peak_rss_mb": mem.peak_rss, "peak_pss_mb": mem.peak_pss, "procs": mem.peak_procs,
            "at_peak": mem.at_peak}


def _round_compute(path: Path, rnd: int) -> dict[str, float]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    c = [r.get("compute_s", 0.0) for r in rows if r["round"] == rnd and r["kind"] == "train"]
    return {"sum_s": sum(c), "max_s": max(c, default=0.0), "times": c}


def _fedkit(scenario: Path | str, overrides: list[str]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(scenario), *overrides],
        check=True, capture_output=True, text=True, cwd=ROOT, env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _floor(overrides: list[str]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, "-c", FLOOR, str(SCENARIO), *overrides],
                         check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def critical_path(overrides: list[str]) -> tuple[float, int, int]:
    """(bound, steps on the critical path, all steps) of a W1 variant: per round, the longest
    sampled client's steps over the round's total."""
    from fedkit.runtime.policy import Sampling, sample_clients
    from fedkit.scenario import load
    from fedkit.scenario.build import build_clients

    s = load(SCENARIO, overrides)
    clients = build_clients(s)
    names = sorted(clients)
    per = s.clients.per_round
    sampling = Sampling(s.seed, per.fraction if per.count is None else None, per.count, per.min)
    crit = total = 0
    for rnd in range(1, s.rounds + 1):
        steps = [s.train.epochs * math.ceil(clients[c].num_train / s.train.batch_size)
                 for c in sample_clients(sampling, names, rnd)]
        crit += max(steps)
        total += sum(steps)
    return crit / total, crit, total


def _load() -> str:
    return "load average {:.1f} / {:.1f} / {:.1f}".format(*os.getloadavg())


# ------------------------------------------------------------------------------ sections


def bench_stacked(repeats: int) -> list[str]:
    lines = [
        "## `stacked` against the plain sequential floor (W1)",
        "",
        "| workload | floor s | sequential s | stacked s | stacked / floor | target | critical-path bound | "
        "final acc (sequential / stacked) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    targets = dict(zip(VARIANTS, (0.6, 0.4), strict=True))
    for name, over in VARIANTS.items():
        floor, seq, st = [], [], []
        for _ in range(repeats):
            floor.append(_floor(over))
            seq.append(_fedkit(SCENARIO, over))
            st.append(_fedkit(SCENARIO, [*over, "execution.kind=stacked"]))
        fw, sw, kw = (statistics.median(r["wall_s"] for r in x) for x in (floor, seq, st))
        bound, crit, total = critical_path(over)
        lines.append(
            f"| {name} | {fw:.2f} | {sw:.2f} | {kw:.2f} | **{kw / fw:.2f}x** | <= {targets[name]}x | "
            f"{bound:.2f} ({crit:,} of {total:,} steps) | {seq[0]['acc']:.4f} / {st[0]['acc']:.4f} |"
        )
        print(lines[-1], _load(), flush=True)
    return lines


def _lpt(times: list[float], workers: int = 2) -> float:
    """The round's wall time if ``times`` (the clients' compute) ran longest first on ``workers``
    with no overhead: the pool's dispatch order, so its best case."""
    load = [0.0] * workers
    for t in sorted(times, reverse=True):
        load[load.index(min(load))] += t
    return max(load)


def bench_pool(repeats: int) -> list[str]:
    w = POOL_WORKLOAD
    seq, pool = [], []
    for _ in range(repeats):
        seq.append(_fedkit(w["scenario"], w["overrides"]))
        pool.append(_fedkit(w["scenario"], [*w["overrides"], "execution={kind: pool, workers: 2}"]))

    def med(runs: list[dict[str, Any]], f: Any) -> float:
        return statistics.median(f(x) for x in runs)

    def steady(x: dict[str, Any]) -> float:
        return statistics.median(r["wall_s"] for r in x["rounds"][1:])

    sw, pw = med(seq, lambda x: x["wall_s"]), med(pool, lambda x: x["wall_s"])
    s_set, p_set = med(seq, lambda x: x["setup_s"]), med(pool, lambda x: x["setup_s"])
    s_r1, p_r1 = med(seq, lambda x: x["rounds"][0]["wall_s"]), med(pool, lambda x: x["rounds"][0]["wall_s"])
    s_st, p_st = med(seq, steady), med(pool, steady)
    # the 2-worker bound of the steady state, from the sequential runs' per-client compute
    bound = med(seq, lambda x: statistics.median(
        _lpt(c["times"]) / r["wall_s"] for c, r in zip(x["compute"][1:], x["rounds"][1:], strict=True)))
    compute = med(seq, lambda x: statistics.median(
        c["sum_s"] / r["wall_s"] for c, r in zip(x["compute"][1:], x["rounds"][1:], strict=True)))
    same = all(x["params"] == seq[0]["params"] for x in [*seq, *pool])
    lines = [
        "## `pool` (2 workers) against sequential",
        "",
        f"Workload: {w['name']}; local training is {compute:.0%} of a sequential round. Set-up: the "
        "run's start to round 1 (data, model, the pool's worker start-up); round 1 carries first-use "
        "costs (torch.optim imports torch._dynamo on its first optimizer); steady state: median of "
        "rounds 2..N. Workers are forked from the driver (Linux): they start with torch, fedkit and "
        "every client's data in place.",
        "",
        "| executor | wall s | vs sequential | target | set-up s | round 1 s | steady round s | steady vs sequential "
        "| 2-worker bound | peak memory, all processes (PSS MB) | final acc |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| sequential | {sw:.2f} | 1.00x | | {s_set:.2f} | {s_r1:.2f} | {s_st:.3f} | 1.00x | | "
        f"{max(r['peak_pss_mb'] for r in seq):.0f} | {seq[0]['acc']:.4f} |",
        f"| pool, 2 workers | {pw:.2f} | **{pw / sw:.2f}x** | <= 0.65x | {p_set:.2f} | {p_r1:.2f} | {p_st:.3f} "
        f"| **{p_st / s_st:.2f}x** | {bound:.2f}x | {max(r['peak_pss_mb'] for r in pool):.0f} | {pool[0]['acc']:.4f} |",
        "",
        f"Fixed cost (set-up + round 1 - one steady round): sequential {s_set + s_r1 - s_st:.2f} s, "
        f"pool {p_set + p_r1 - p_st:.2f} s. Final parameters "
        f"{'bit-identical' if same else 'DIFFERENT'} across all {2 * repeats} runs (sha256 {seq[0]['params'][:12]}). "
        "2-worker bound: the steady round if the clients' own compute ran longest-first on 2 "
        "workers with no overhead.",
    ]
    print("\n".join(lines[-4:]), _load(), flush=True)
    return lines


def bench_ray(repeats: int) -> list[str]:
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return ["## `ray`", "", "Skipped: ray is not installed (`pip install 'fedkit[ray]'`)."]
    seq = [_fedkit(SCENARIO, RAY_W1) for _ in range(repeats)]
    ray = [_fedkit(SCENARIO, [*RAY_W1, "execution={kind: ray, workers: 2}"]) for _ in range(repeats)]

    def per_round(runs: list[dict[str, Any]]) -> tuple[float, float, float]:
        rounds = [r["wall_s"] for x in runs for r in x["rounds"]]
        comp = [c for x in runs for c in x["compute"]]
        ideal = [max(c["sum_s"] / 2, c["max_s"]) for c in comp]  # 2 workers, perfectly balanced
        over = [w - i for w, i in zip(rounds, ideal, strict=True)]
        return statistics.median(rounds), statistics.median(c["sum_s"] for c in comp), statistics.median(over)

    s_round, s_comp, _ = per_round(seq)
    r_round, r_comp, r_over = per_round(ray)
    big = _fedkit(SCENARIO, [*RAY_1000["overrides"], "execution={kind: ray, workers: 2}"])
    first, last = big["rounds"][0], big["rounds"][-1]
    lines = [
        "## `ray` on a local Ray with 2 workers",
        "",
        "Per round of W1 (10 of 100 clients, 20 rounds); overhead = round wall time minus the ideal "
        "2-worker compute time max(sum of the clients' compute / 2, the longest client).",
        "",
        "| executor | wall s (start-up included) | median round s | clients' compute per round s | overhead per round s |",
        "|---|---:|---:|---:|---:|",
        f"| sequential | {statistics.median(x['wall_s'] for x in seq):.2f} | {s_round:.3f} | {s_comp:.3f} | "
        f"{s_round - s_comp:.3f} (not parallel) |",
        f"| ray, 2 workers | {statistics.median(x['wall_s'] for x in ray):.2f} | {r_round:.3f} | {r_comp:.3f} | "
        f"**{r_over:.3f}** |",
        "",
        f"{RAY_1000['name']}: ran to completion in {big['wall_s']:.1f} s (median round {statistics.median(r['wall_s'] for r in big['rounds']):.2f} s), "
        f"final accuracy {big['acc']:.4f}. Peak memory of all {big['procs']} processes: "
        f"**{big['peak_pss_mb']:.0f} MB PSS** ({big['peak_rss_mb']:.0f} MB summed RSS, shared pages counted per process); "
        f"at the peak: {', '.join(f'{k} {v:.0f} MB' for k, v in sorted(big['at_peak'].items()))}; "
        f"after round 1 {first['pss_mb']:.0f} MB PSS, after round {len(big['rounds'])} {last['pss_mb']:.0f} MB "
        "(bounded: each actor holds every client's data once, tasks carry only params and small states).",
    ]
    print("\n".join(lines[-5:]), _load(), flush=True)
    return lines


SECTIONS = {"stacked": bench_stacked, "pool": bench_pool, "ray": bench_ray}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=",".join(SECTIONS))
    ap.add_argument("--out", default=str(HERE / "results" / "execution.md"))
    ap.add_argument("--child", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1:])))
        return
    import numpy
    import torch

    header = [
        "# Client executors: stacked, pool, ray",
        "",
        f"torch {torch.__version__}, numpy {numpy.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores. Each run in a fresh process, interleaved; wall = the run after imports "
        "(data generation, worker start-up, training, aggregation, the final evaluation). Each section "
        "says when it was measured: `--only` reruns some and keeps the others.",
        "",
    ]
    blocks = _sections(Path(args.out))
    for name in args.only.split(","):
        start = f"Measured {time.strftime('%Y-%m-%d %H:%M')}, median of {args.repeats} run(s); machine at the start: {_load()}"
        body = SECTIONS[name](args.repeats)
        blocks[name] = [*body, "", f"{start}, at the end: {_load()}."]
    lines = [*header]
    for name in SECTIONS:
        if name in blocks:
            lines += [*blocks[name], ""]
    text = "\n".join(lines).rstrip("\n") + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


def _sections(path: Path) -> dict[str, list[str]]:
    """The sections of an existing results file, by executor (``## `pool` ...`` -> pool)."""
    if not path.exists():
        return {}
    out: dict[str, list[str]] = {}
    name = None
    for line in path.read_text().splitlines():
        if line.startswith("## `"):
            name = line.split("`")[1]
            out[name] = []
        elif line.startswith("Machine at the end:"):
            name = None  # the old single footer
        if name is not None:
            out[name].append(line)
    return {k: [*v[:-1]] if v and not v[-1] else v for k, v in out.items() if k in SECTIONS}

if __name__ == "__main__":
    main()
