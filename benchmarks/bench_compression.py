"""Accuracy against bytes for every uplink pipeline on one reference scenario.

Runs scenarios/digits_dense.yaml (digits, 20 Dirichlet(0.5) clients all taking part, a 19k
parameter MLP, 40 rounds of FedAvg) once per uplink pipeline, plus scenarios/
digits_compressed.yaml (compressed uplink and delta downlink). Every byte is a serialized
message; ratios are against the same messages as float32. Writes
benchmarks/results/compression.md.

    python benchmarks/bench_compression.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from fedkit.experiment import run_scenario
from fedkit.scenario import load

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "scenarios" / "digits_dense.yaml"
PIPELINES = [
    "identity",
    "zstd",
    "fp16",
    "bf16",
    "quant(bits=8)",
    "ef:quant(bits=4)",
    "quant(bits=2,stochastic=true)",
    "qsgd(levels=15)",
    "ef:sign",
    "ef:kmeans(clusters=4)|zstd",
    "ef:topk(ratio=0.2)|kmeans(clusters=3)|zstd",
    "ef:randk(ratio=0.05)",
    "ef:powersgd(rank=2)",
    "ef:topk(ratio=0.01)",
    "ef:topk(ratio=0.01)|quant(bits=8)|zstd",
    "ef:adaptive(family=topk,candidates=[0.002,0.01,0.05],uniform=0.01,then='quant(bits=8)|zstd')",
    "ef:adaptive(family=powersgd,candidates=[1,2,4,8],uniform=2)",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compression.md"))
    args = ap.parse_args()
    runs = [(p, load(BASE, [f'compression.uplink="{p}"', "output.plot=false"])) for p in PIPELINES]
    runs.append(("digits_compressed.yaml (uplink above + delta downlink 8-bit)", load(ROOT / "scenarios" / "digits_compressed.yaml", ["output.plot=false"])))
    lines = [
        "# Accuracy against bytes per uplink pipeline",
        "",
        "`python benchmarks/bench_compression.py` on scenarios/digits_dense.yaml (digits, 20 clients "
        "Dirichlet(0.5), all per round, MLP [256] = 19,210 params, 40 rounds FedAvg). Bytes are "
        "serialized messages summed over the run; ratio = float32 bytes / sent bytes; encode = "
        "client uplink encodes + server downlink encodes, decode = server uplink decodes (seconds, "
        "whole run).",
        "",
        "| uplink pipeline | final acc | Δ acc (points) | uplink bytes | uplink ratio | downlink bytes | downlink ratio | encode s | decode s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    dense_acc = None
    for name, s in runs:
        with tempfile.TemporaryDirectory() as d:
            sm = run_scenario(s, d)
        acc = sm["final_accuracy"]
        dense_acc = acc if dense_acc is None else dense_acc
        cell = name.replace("|", "\\|")  # a bare | would split the markdown cell
        lines.append(
            f"| `{cell}` | {acc:.4f} | {100 * (acc - dense_acc):+.2f} | {sm['total_bytes_up']:,} | "
            f"{sm['ratio_up']:.1f}x | {sm['total_bytes_down']:,} | {sm['ratio_down']:.1f}x | "
            f"{sm['total_encode_s']:.2f} | {sm['total_decode_s']:.2f} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
