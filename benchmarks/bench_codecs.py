"""Codec throughput on one core: encode, decode and round trip of ~10 M float32 parameters.

    python benchmarks/bench_codecs.py [--params 10000000] [--repeat 3] [--only topk]

The update is a few model-shaped tensors (a 2048x4096 dense layer, a 512x256x3x3 conv kernel,
a 1024x420 layer and biases) of Gaussian deltas. MB/s are of float32 input (4 bytes per
parameter); the ratio is 4 * params / Encoded.nbytes (the bytes that cross the wire). Times
are the best of ``--repeat`` runs (robust to other load on a shared machine). Writes benchmarks/results/codecs.md and prints it.
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

from fedkit.compression import decode, make  # noqa: E402

SPECS = [
    "identity",
    "zstd(level=3)",
    "fp16",
    "bf16",
    "quant(bits=8)",
    "quant(bits=4)",
    "quant(bits=3)",
    "quant(bits=2,stochastic=True)",
    "qsgd(levels=15)",
    "sign",
    "kmeans(clusters=16)",
    "topk(ratio=0.01)",
    "topk(ratio=0.01,scope=global)",
    "topk(ratio=0.01)|quant(bits=8)",
    "topk(ratio=0.01)|quant(bits=8)|zstd(level=3)",
    "randk(ratio=0.01)",
    "randk(ratio=0.01,scale=True)|quant(bits=8)",
    "powersgd(rank=4)",
    "ef:topk(ratio=0.01)",
    "ef:sign",
    "ef:powersgd(rank=4)",
]
TARGET = ("quant", "topk", "randk", "sign")
TARGET_MBS = 200.0


def update(params: int, seed: int = 0) -> list[np.ndarray]:
    """Model-shaped float32 deltas totalling ``params`` parameters."""
    shapes = [(2048, 4096), (512, 256, 3, 3), (1024, 420), (1024,)]
    scale = params / 10_000_000
    shapes = [(max(1, int(s[0] * scale)), *s[1:]) for s in shapes]
    used = sum(int(np.prod(s)) for s in shapes)
    if params > used:
        shapes.append((params - used,))
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s, dtype=np.float32) * 1e-3) for s in shapes]


def measure(spec: str, x: list[np.ndarray], repeat: int) -> dict[str, float]:
    codec = make(spec)
    state = codec.init(x)
    rng = np.random.default_rng(0)
    state, enc = codec.encode(state, x, rng)  # warm-up (and warm start for PowerSGD)
    decode(enc)
    enc_t, dec_t = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        state, enc = codec.encode(state, x, rng)
        t1 = time.perf_counter()
        decode(enc)
        t2 = time.perf_counter()
        enc_t.append(t1 - t0)
        dec_t.append(t2 - t1)
    mb = 4 * sum(a.size for a in x) / 1e6
    e, d = min(enc_t), min(dec_t)
    return {"encode": mb / e, "decode": mb / d, "roundtrip": mb / (e + d),
            "ratio": 4 * sum(a.size for a in x) / enc.nbytes, "nbytes": enc.nbytes}


def table(rows: list[tuple[str, dict[str, float]]], params: int, repeat: int) -> str:
    head = [
        f"# Codec throughput ({params / 1e6:g} M float32 parameters, one core)",
        "",
        f"numpy {np.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"{platform.processor() or platform.platform()}. MB/s of float32 input (best of "
        f"{repeat} runs); ratio = 4 x params / wire bytes. Target: round trip >= {TARGET_MBS:g} MB/s for "
        f"{', '.join(TARGET)}.",
        "",
        "| codec | encode MB/s | decode MB/s | round trip MB/s | ratio | wire bytes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for spec, r in rows:
        flag = ""
        if spec.split("(")[0] in TARGET and r["roundtrip"] < TARGET_MBS:
            flag = " (below target)"
        name = spec.replace("|", "\\|")  # a pipe inside a markdown table cell
        head.append(
            f"| `{name}` | {r['encode']:.0f} | {r['decode']:.0f} | {r['roundtrip']:.0f}{flag} "
            f"| {r['ratio']:.1f}x | {int(r['nbytes']):,} |"
        )
    return "\n".join(head) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", default="", help="substring filter on the codec spec")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "codecs.md"))
    args = ap.parse_args()
    x = update(args.params)
    rows = []
    for spec in SPECS:
        if args.only in spec:
            rows.append((spec, measure(spec, x, args.repeat)))
            print(f"{spec}: {rows[-1][1]['roundtrip']:.0f} MB/s", flush=True)
    text = table(rows, sum(a.size for a in x), args.repeat)
    if not args.only:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
