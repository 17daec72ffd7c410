"""Split learning on digits with the reference CNN: bytes per round against FL, and step overhead.

    python benchmarks/bench_split.py [--quick]

A. Bytes per client per round as the samples per client n grow, FL against every split scheme
   (plus 8-bit activations and a learned bottleneck). SL bytes are the byte metrics of
   :func:`fedkit.split.schemes.run_round` (every activation, gradient, label and client-part
   frame really encoded, ``Encoded.nbytes``); FL bytes are the whole model encoded with the
   identity codec down and up. Each client's n samples are drawn from the 1,437 digits training
   images (without replacement up to 1,437, with replacement above; bytes do not depend on the
   values). The measured crossover is the smallest n at which SL costs at least FL, found by
   bisection over real rounds; beside it, the textbook prediction 2|w| / (per-sample bytes)
   (FL pays 2|w|, SL about 2 n |A|) and the same with SL's client-part exchange and labels.
B. Step overhead: the in-process split training step (train_split over a LocalChannel to a
   LocalServer, splitfed_v1, identity codecs) against the FL step (fedkit.models.sgd_train) on
   the same batches, one thread, median over interleaved repeats.

Writes benchmarks/results/split.md and benchmarks/results/split_crossover.png.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core: set before numpy and torch load their BLAS

import argparse  # noqa: E402
import copy  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's fedkit, not whichever one the venv has installed

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from fedkit import compression  # noqa: E402
from fedkit.data.datasets import load_digits  # noqa: E402
from fedkit.models import LocalData, TrainConfig, init_model, sgd_train  # noqa: E402
from fedkit.models.params import get_params  # noqa: E402
from fedkit.rng import rng  # noqa: E402
from fedkit.split.channel import LocalChannel, SplitBatch  # noqa: E402
from fedkit.split.client import ClientConfig, train_split  # noqa: E402
from fedkit.split.describe import cut_table  # noqa: E402
from fedkit.split.partition import split  # noqa: E402
from fedkit.split.schemes import SplitSetup, initial, make_setup, run_round  # noqa: E402
from fedkit.split.server import LocalServer, ServerConfig, server_init  # noqa: E402

SHAPE, CLASSES, SEED = (1, 8, 8), 10, 0
CUT, UCUTS = "4", ("1", "4")  # the CNN's default cut (after the max-pool); U-shape: conv1 | conv2..pool | linear
CLIENTS = 2  # per round; bytes are reported per client
NS = [1, 3, 10, 30, 100, 300, 1000]
BREAKDOWN_N = 100
BOTTLENECK = 4  # channels at the cut (of 32)
TRAIN = TrainConfig(epochs=1, batch_size=32, lr=0.05)
SERVER = TrainConfig(lr=0.05)
CATEGORIES = ["activations_up", "activations_down", "gradients_up", "gradients_down", "labels_up",
              "model_down", "model_up"]


@dataclass(frozen=True)
class Method:
    label: str
    scheme: str
    up: str = "identity"
    down: str = "identity"
    bottleneck: int | None = None


METHODS = [
    Method("vanilla", "vanilla"),
    Method("splitfed_v1", "splitfed_v1"),
    Method("splitfed_v2", "splitfed_v2"),
    Method("ushape", "ushape"),
    Method("local_loss", "local_loss"),
    Method("splitfed_v1, activations quant(bits=8)", "splitfed_v1", up="quant(bits=8)"),
    Method("splitfed_v1, both ways quant(bits=8)", "splitfed_v1", up="quant(bits=8)", down="quant(bits=8)"),
    Method(f"splitfed_v1, bottleneck k={BOTTLENECK}", "splitfed_v1", bottleneck=BOTTLENECK),
    Method(f"splitfed_v1, bottleneck k={BOTTLENECK} + quant(bits=8) both ways", "splitfed_v1",
           up="quant(bits=8)", down="quant(bits=8)", bottleneck=BOTTLENECK),
]


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_digits(SEED, flat=False)
    return torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)


def model() -> torch.nn.Module:
    return init_model({"name": "cnn"}, SHAPE, CLASSES, seed=1)


# --------------------------------------------------------------------------------------------
# A. bytes


def client_data(x: torch.Tensor, y: torch.Tensor, n: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    for k in range(CLIENTS):
        idx = torch.from_numpy(rng(SEED, "bench-split", n, k).choice(len(y), n, replace=n > len(y)))
        out[f"c{k}"] = (x[idx], y[idx])
    return out


def setup_of(m: Method) -> SplitSetup:
    cuts = list(UCUTS) if m.scheme == "ushape" else CUT
    return make_setup(m.scheme, model(), cuts, SHAPE, CLASSES, seed=SEED, bottleneck=m.bottleneck)


def sl_bytes(m: Method, setup: SplitSetup, x: torch.Tensor, y: torch.Tensor, n: int) -> dict[str, float]:
    """Bytes per client of one real round with n samples per client, by category."""
    cp, sp = initial(setup)
    state = server_init(ServerConfig(m.scheme, setup.server_module, SERVER), sp)
    _, _, met = run_round(setup, cp, state, client_data(x, y, n), 0, train=TRAIN, server_opt=SERVER,
                          seed=SEED, up=m.up, down=m.down)
    per = {c: met[f"bytes_{c}"] / CLIENTS for c in CATEGORIES}
    per["total"] = sum(per.values())
    return per


def fl_bytes() -> int:
    """FL per client per round: the whole model down and the update up, identity codec."""
    w = get_params(model())
    return 2 * compression.make("identity").encode(None, w)[1].nbytes


def crossover(cost: Callable[[int], float], fl: float, hi: int = 1 << 14) -> int | None:
    """Smallest n with cost(n) >= fl (cost is non-decreasing in n); None if cost(hi) < fl."""
    if cost(1) >= fl:
        return 1
    if cost(hi) < fl:
        return None
    lo = 1  # cost(lo) < fl <= cost(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) < fl else (lo, mid)
    return hi


def per_sample_floats(m: Method, setup: SplitSetup) -> dict[str, float]:
    """What the formula charges: wire bytes per sample (4 a float, 1 at 8 bits), labels, |w_c|."""
    fu = 1 if m.up.startswith("quant(bits=8") else 4  # client -> server
    fd = 1 if m.down.startswith("quant(bits=8") else 4  # server -> client
    a = math.prod(setup.activation_shape)
    if m.scheme == "ushape":  # head output up + its gradient down; body output down + its gradient up
        b = math.prod(setup.server_module(torch.zeros(2, *setup.activation_shape)).shape[1:])
        sample = (a + b) * (fu + fd)
    elif m.scheme == "local_loss":  # activations up only
        sample = a * fu
    else:
        sample = a * (fu + fd)
    wc = 4 * sum(p.numel() for mod in setup.client_modules for p in mod.parameters())
    labels = 0 if m.scheme == "ushape" else 8  # int64, never in U-shape
    return {"sample": sample, "labels": labels, "client_part": wc}


def bench_bytes(quick: bool) -> tuple[list[str], dict[str, object]]:
    x, y = digits()
    fl = fl_bytes()
    w = 4 * sum(p.numel() for p in model().parameters())
    ns = NS[:4] if quick else NS
    rows, curves, cross = [], {}, {}
    for m in METHODS:
        setup = setup_of(m)
        cache: dict[int, dict[str, float]] = {}

        def cost(n: int, m: Method = m, setup: SplitSetup = setup, cache: dict = cache) -> float:  # type: ignore[type-arg]
            if n not in cache:
                cache[n] = sl_bytes(m, setup, x, y, n)
            return cache[n]["total"]

        curves[m.label] = [cost(n) for n in ns]
        got = crossover(cost, fl, hi=1 << (10 if quick else 14))
        f = per_sample_floats(m, setup)
        textbook = 2 * w / f["sample"]
        refined = (2 * w - 2 * f["client_part"]) / (f["sample"] + f["labels"])
        cross[m.label] = got
        cost(BREAKDOWN_N)
        rows.append((m, cache, got, textbook, refined, f))
        print(f"{m.label}: crossover measured {got}, textbook {textbook:.1f}, refined {refined:.1f}", flush=True)
    lines = [
        "## A. Bytes per client per round: FL vs split learning",
        "",
        f"Reference CNN (9,930 params, |w| = {w:,} B as float32) on digits, {CLIENTS} clients per round, "
        f"1 local epoch, batch {TRAIN.batch_size}, SGD lr {TRAIN.lr}; cut `{CUT}` (after the max-pool: "
        f"|A| = 32x4x4 floats = 2,048 B per sample); U-shape cuts `{UCUTS[0]}`/`{UCUTS[1]}`. Each client's n "
        "samples are drawn from the 1,437 digits training images (without replacement; bytes do not "
        "depend on the values). SL bytes: run_round's metrics (every frame encoded, `Encoded.nbytes`), "
        "model exchange = the client part down and up (identity codec). FL bytes: the whole model encoded "
        "with the identity codec, down + up. FL is the plain CNN in every row.",
        "",
        "| method | " + " | ".join(f"n={n}" for n in ns) + " |",
        "|---|" + "---:|" * len(ns),
        "| FL (FedAvg, identity) | " + " | ".join(f"{fl:,}" for _ in ns) + " |",
    ]
    for m, cache, *_ in rows:
        lines.append(f"| {m.label} | " + " | ".join(f"{int(cache[n]['total']):,}" for n in ns) + " |")
    lines += [
        "",
        "### Crossover: the n from which SL costs at least FL",
        "",
        "Measured: the smallest n whose measured SL bytes >= FL bytes (bisection over real rounds). "
        "Textbook: 2|w| / (per-sample bytes on the wire as floats: 2|A| for vanilla/SplitFed, "
        "|A| for local_loss, 2|H| + 2|B| for U-shape; 1 byte a value at 8 bits). Refined: "
        "(2|w| - 2|w_c|) / (per-sample bytes + 8 B int64 label), i.e. also charging the client part "
        "|w_c| SL exchanges every round.",
        "",
        "| method | per-sample bytes | client part \\|w_c\\| B | measured n* | textbook n* | refined n* |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m, _, got, textbook, refined, f in rows:
        meas = "none: SL >= FL at n=1" if got == 1 else ("> search range" if got is None else f"{got}")
        ref = f"{refined:.1f}" if refined > 0 else "none (\\|w_c\\| >= \\|w\\|)"
        lines.append(f"| {m.label} | {f['sample']:,.0f} | {f['client_part']:,.0f} | {meas} | {textbook:.1f} | {ref} |")
    base = next(r for r in rows if r[0].label == "splitfed_v1")
    wc = base[5]["client_part"]
    lines += [
        "",
        f"Reading: FL costs {fl:,} B per client per round whatever n is; SplitFed grows by about "
        f"{base[5]['sample'] + base[5]['labels']:,.0f} B per sample (activation up, its gradient down, "
        f"the label). SL wins below the crossover only: measured n* = {base[2]} against the textbook "
        f"{base[3]:.1f}, because SL also ships the client part down and up every round (2|w_c| = "
        f"{2 * wc:,.0f} B, {100 * wc / w:.0f}% of 2|w|), which the refined formula ({base[4]:.1f}) "
        "charges. 8-bit codecs and the bottleneck move the crossover right by the factor they shrink "
        "the per-sample bytes (refined formula within a sample of the measurement). local_loss never "
        "wins at this cut: its default linear auxiliary head on 512 floats has as many parameters as "
        "the server part, so client part + head is the whole model and its exchange alone is FL's 2|w|.",
    ]
    lines += [
        "",
        f"### Where the bytes go at n={BREAKDOWN_N} (per client per round)",
        "",
        "| method | " + " | ".join(CATEGORIES) + " | total |",
        "|---|" + "---:|" * (len(CATEGORIES) + 1),
    ]
    for m, cache, *_ in rows:
        b = cache[BREAKDOWN_N]
        lines.append(f"| {m.label} | " + " | ".join(f"{int(b[c]):,}" for c in CATEGORIES) + f" | {int(b['total']):,} |")
    return lines, {"ns": ns, "fl": fl, "curves": curves, "cross": cross}


def plot(data: dict[str, object], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns, fl = data["ns"], data["fl"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.plot(ns, [fl] * len(ns), "k-", lw=2.5, label="FL (2|w|)")
    groups: dict[tuple[float, ...], list[str]] = {}  # identical byte curves share one line
    for label, ys in data["curves"].items():  # type: ignore[union-attr]
        groups.setdefault(tuple(ys), []).append(label)
    for (ys, labels), marker in zip(groups.items(), "os^vDPX*h", strict=False):
        ax.plot(ns, ys, marker=marker, ms=4, lw=1.2, label=" = ".join(labels))
        n = data["cross"][labels[0]]  # type: ignore[index]
        if n is not None and n > 1:
            ax.axvline(n, color=ax.lines[-1].get_color(), ls=":", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="samples per client n", ylabel="bytes per client per round",
           title="Digits CNN: FL vs split learning bytes (dotted: measured crossover)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# B. step overhead


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.thread_time()


def since(t0: tuple[float, float]) -> tuple[float, float]:
    """(wall seconds, this thread's CPU seconds) since ``t0``."""
    return time.perf_counter() - t0[0], time.thread_time() - t0[1]


def fmt_flops(f: float | None) -> str:
    return "same ops (same params out)" if f is None else f"{f / 1e6:.2f} M"


class Direct:
    """A channel without codecs: the server handler called on the message itself."""

    def __init__(self, handle: Callable[[str, SplitBatch], SplitBatch | None]) -> None:
        self.handle = handle

    def exchange(self, msg: SplitBatch) -> SplitBatch | None:
        return self.handle("c0", msg)


def bench_steps(quick: bool) -> list[str]:
    x, y = digits()
    base = model()
    steps, repeats = (10, 8) if quick else (20, 60)
    load0 = os.getloadavg()[0]
    lines = [
        "## B. Step overhead: in-process split step vs the unsplit step",
        "",
        f"Reference CNN, cut `{CUT}`, splitfed_v1, SGD lr {TRAIN.lr}, {steps} steps per task on the same "
        "batches both ways (the same numpy Generator), torch.set_num_threads(1). Per-step time = task "
        f"time / {steps}; median (p10-p90) over {repeats} interleaved repeats. Rows: the FL step "
        "(`sgd_train`, one module, torch.optim); the split step as shipped (`train_split` over a "
        "`LocalChannel` to a `LocalServer`: functional parts, every frame encoded and decoded); the "
        "same over a codec-less channel; a pure-torch floor (two modules, detach at the cut, torch.optim). "
        "Every variant ends at the same parameters (checked), so the work is the same; FLOPs are counted "
        "for the torch-only variants (FlopCounterMode's hooks refuse autograd.grad on leaves). On a "
        "shared machine (other jobs on the same 2 cores) the wall min and the thread CPU time "
        "(`time.thread_time`, not charged for time slices other processes take) are the steadier figures.",
        "",
        "How the split step is kept close to the floor: each part trains live for a whole task "
        "(`fedkit.split.optim.LivePart`: tensors and optimizer buffers copied in once, updated in "
        "place, copied out at the task's end; the server's part from a client's first batch until "
        "the state is read), a forward is a plain call of a per-thread copy of the architecture that "
        "holds the part's tensors (no `functional_call` re-parametrisation per call), only parts "
        "that may draw randomness run under the keyed `seeded` context, the channel draws codec "
        "randomness from one keyed Generator per task stream and passes the wire bytes without "
        "copying them. What remains over the codec-less row is the codec work itself (identity: "
        "`pack_arrays`/`unpack_arrays` of activations, labels and gradients); the floor's ~5% is the "
        "cut itself (two autograd calls). Before this (value-style parts: per-step numpy "
        "unpacking, out-of-place optimizer steps through numpy, `functional_call`, keyed seeding of "
        "every call, a keyed Generator and a to_bytes/from_bytes copy per message), the split step "
        "was 1.56x (batch 32) and 1.28x (batch 128) the unsplit step in CPU median (1.55x / 1.28x "
        "wall median), measured on the same machine and load as the table this change shipped with; "
        "`torch.manual_seed` inside "
        "`seeded` had made it 2.1x before that (lazy CUDA/XPU/MTIA seeding records a stack trace "
        "per call; `fedkit/split/optim.py` seeds the CPU generator only).",
        "",
        "| batch | step | wall ms/step median (p10-p90) | wall min | CPU ms/step median | x unsplit wall median | x unsplit wall min | x unsplit CPU median | FLOPs/step |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for bs in [32, 128]:
        tr = TrainConfig(steps=steps, batch_size=bs, lr=TRAIN.lr)
        setup = make_setup("splitfed_v1", base, CUT, SHAPE, CLASSES, seed=SEED)
        cp, sp = initial(setup)
        scfg = ServerConfig("splitfed_v1", setup.server_module, tr, SEED, setup.activation_shape)
        ccfg = ClientConfig("splitfed_v1", setup.client_modules, tr, SEED)
        sm = split(base, CUT)

        def unsplit(tr: TrainConfig = tr) -> tuple[tuple[float, float], list[np.ndarray]]:
            m, data, gen = copy.deepcopy(base), LocalData(x, y), rng(SEED, "bench-steps")
            t0 = clock()
            sgd_train(m, data, tr, gen)
            return since(t0), get_params(m)

        def split_step(direct: bool = False, scfg: ServerConfig = scfg, ccfg: ClientConfig = ccfg,
                       cp: list = cp, sp: list = sp) -> tuple[tuple[float, float], list[np.ndarray]]:  # type: ignore[type-arg]
            box = LocalServer(scfg, server_init(scfg, sp))
            ch = Direct(box.handle) if direct else LocalChannel(box.handle, "c0")
            gen = rng(SEED, "bench-steps")
            t0 = clock()
            new, _ = train_split(ccfg, cp, x, y, ch, gen)  # type: ignore[arg-type]
            part = box.state.copies.get("c0", box.state.shared)  # splitfed_v1: the client's copy
            return since(t0), new + part.params

        def floor(tr: TrainConfig = tr, sm=sm) -> tuple[tuple[float, float], list[np.ndarray]]:  # type: ignore[no-untyped-def]
            from fedkit.models.train import batches

            c, s = copy.deepcopy(sm.client), copy.deepcopy(sm.server)
            oc = torch.optim.SGD(c.parameters(), lr=tr.lr)
            os_ = torch.optim.SGD(s.parameters(), lr=tr.lr)
            idx = batches(len(y), tr, rng(SEED, "bench-steps"))
            t0 = clock()
            for i in idx:
                oc.zero_grad(set_to_none=True)
                os_.zero_grad(set_to_none=True)
                a = c(x[i])
                cut = a.detach().requires_grad_(True)
                F.cross_entropy(s(cut), y[i]).backward()
                os_.step()
                a.backward(cut.grad)
                oc.step()
            return since(t0), get_params(c) + get_params(s)

        variants: dict[str, Callable[[], tuple[tuple[float, float], list[np.ndarray]]]] = {
            "unsplit (FL sgd_train)": unsplit,
            "split (train_split + LocalChannel)": split_step,
            "split, codec-less channel": lambda f=split_step: f(True),
            "split floor (pure torch)": floor,
        }
        ref = unsplit()[1]
        for name, fn in variants.items():  # same work: every variant ends at the same parameters
            got = fn()[1]
            if not all(np.allclose(a, b, atol=1e-5) for a, b in zip(ref, got, strict=True)):
                raise AssertionError(f"{name} does not compute the unsplit step")
        flops = {}  # FlopCounterMode's hooks refuse autograd.grad on leaves: count the torch-only ones
        for name in ("unsplit (FL sgd_train)", "split floor (pure torch)"):
            with FlopCounterMode(display=False) as counter:
                variants[name]()
            flops[name] = counter.get_total_flops() / steps
        wall: dict[str, list[float]] = {k: [] for k in variants}
        cpu: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(repeats):
            for name, fn in variants.items():
                (w, c), _ = fn()
                wall[name].append(w / steps * 1e3)
                cpu[name].append(c / steps * 1e3)
        med = {k: statistics.median(v) for k, v in wall.items()}
        low = {k: min(v) for k, v in wall.items()}
        cmed = {k: statistics.median(v) for k, v in cpu.items()}
        ref_name = "unsplit (FL sgd_train)"
        for name, ts in wall.items():
            q = np.percentile(ts, [10, 90])
            lines.append(f"| {bs} | {name} | {med[name]:.3f} ({q[0]:.2f}-{q[1]:.2f}) | {low[name]:.3f} | "
                         f"{cmed[name]:.3f} | {med[name] / med[ref_name]:.2f}x | {low[name] / low[ref_name]:.2f}x | "
                         f"{cmed[name] / cmed[ref_name]:.2f}x | {fmt_flops(flops.get(name))} |")
            print(lines[-1], flush=True)
    lines += ["", f"1-minute load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
              f"({os.cpu_count()} cores)."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats (a smoke run)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "split.md"))
    ap.add_argument("--only", choices=["bytes", "steps"], help="run one part (prints, writes nothing)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.only:
        print("\n".join(bench_bytes(args.quick)[0] if args.only == "bytes" else bench_steps(args.quick)))
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cuts = cut_table(model(), SHAPE, CLASSES)
    a_lines, data = bench_bytes(args.quick)
    png = out.with_name("split_crossover.png")
    plot(data, png)
    b_lines = bench_steps(args.quick)
    head = [
        "# Split learning: bytes against FL, and step overhead",
        "",
        f"`python benchmarks/bench_split.py` (`make bench-split`); {platform.python_implementation()} "
        f"{platform.python_version()}, torch {torch.__version__}, {platform.machine()}, one thread. "
        f"Plot: `{png.name}`.",
        "",
        "Cut points of the reference CNN (`fedkit.split.describe.cut_table`):",
        "",
        "| cut | client params | server params | activation/sample | bytes/sample | client FLOPs share |",
        "|---|---:|---:|---|---:|---:|",
        *(f"| `{r.name}` | {r.client_params:,} | {r.server_params:,} | {'x'.join(map(str, r.activation_shape))} "
          f"| {r.activation_bytes_per_sample:,} | {100 * r.client_share:.1f}% |" for r in cuts),
        "",
    ]
    text = "\n".join([*head, *a_lines, "", *b_lines]) + "\n"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
