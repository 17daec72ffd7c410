"""Reference experiment 1 of results/peft.md: every fine-tuning method on the tiny ViT, same budget.

    python benchmarks/bench_peft_vit.py [--rounds 10] [--seeds 2] [--no-sweep]

The tiny ViT (fedkit ``vit_tiny``: 2 blocks, dim 32) is pre-trained centrally on digits 0-4
(``scenarios/pretrain_vit_digits.yaml``, as benchmarks/bench_pretrain.py), then fine-tuned
federatedly on digits 5-9 (``scenarios/finetune_vit_digits.yaml``: 10 clients, Dirichlet 0.5, every
client every round, 1 local epoch of batch 16, Adam) by every method, the same rounds and local
epochs for all:

* full fine-tuning, and training from scratch (the same scenario without ``checkpoint:``);
* LoRA (peft, r=4, alpha=8) on every Linear of both blocks (``attn.{query,key,value,out}``,
  ``mlp.{fc1,fc2}``) plus the classifier ``head`` in full, with each ``peft.aggregation``
  (fedit, ffa, fedsa, fedex, flora, flexlora, fedsvd); FedSA-LoRA also reports personalised
  accuracy (each client's own B, federated evaluation on its slice of the test set, matched to its label mix);
* prompt tuning (VPT shallow: 8 tokens at the input) + head; bias tuning (BitFit) + head;
* SFPrompt (split + prompts; :func:`sfprompt`, the one place its scenario form lives).

Every method is a scenario dict checked by ``fedkit.scenario.validate`` and run by
``fedkit.experiment.run_scenario``; one that validation refuses is a row "n/a (refused: ...)"
carrying the message, so a rerun after the engine learns it fills the row in with no change here.
The learning rate is picked per family (full / scratch / two-factor LoRA / one-factor LoRA /
prompt / bias) from a small grid (3-5 values) on two tuning seeds that are not reported (their
partitions, batches and LoRA inits differ; the test set is the same: there is no separate
validation split), by the mean test accuracy over the last 3 rounds (the last alone is noisy).

Writes section 1 of benchmarks/results/peft.md (benchmarks/peft_results.py) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from bench_pretrain import FT, PRE, _without_checkpoint  # noqa: E402
from peft_results import write_section  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from fedkit.experiment import run_scenario  # noqa: E402
from fedkit.models import build_model  # noqa: E402
from fedkit.pretrain import pretrain  # noqa: E402
from fedkit.scenario import Scenario, ScenarioError, load, validate  # noqa: E402
from fedkit.scenario.build import load_data  # noqa: E402
from fedkit.scenario.peft import model_spec  # noqa: E402

RANK, ALPHA = 4, 8
TARGETS = ["query", "key", "value", "out", "fc1", "fc2"]  # every Linear of both blocks
HEAD = ["head"]  # the classifier trains in full with every partial method (new classes 5-9)
PROMPTS = 8
TUNE_SEEDS = (7, 8)  # the learning-rate sweep's seeds, never reported
TAIL = 3  # the sweep scores a run by its mean test accuracy over the last TAIL rounds (less noisy than the last)
GRID = {  # per family, Adam; without the sweep (--no-sweep) each family takes DEFAULT_LR
    "full": (0.002, 0.005, 0.01, 0.02, 0.04),
    "scratch": (0.002, 0.005, 0.01, 0.02, 0.04),
    "lora": (0.003, 0.01, 0.03),
    "lora-one-factor": (0.01, 0.03, 0.1),  # only B trains (FFA-LoRA's practice: a larger lr)
    "prompt": (0.01, 0.03, 0.1),  # few tensors take large steps (VPT's practice)
    "bias": (0.01, 0.03, 0.1),
}
DEFAULT_LR = {"full": 0.01, "scratch": 0.02, "lora": 0.01, "lora-one-factor": 0.03, "prompt": 0.03, "bias": 0.03}

Raw = dict[str, Any]
NOT_SPLIT = ("bytes_down", "bytes_up", "bytes_model_down", "bytes_model_up")  # metrics keys that are not split traffic


def _lora(aggregation: str) -> Callable[[Raw], Raw]:
    def make(raw: Raw) -> Raw:
        out = raw | {"peft": {"method": "lora", "lora": {"r": RANK, "alpha": ALPHA, "targets": TARGETS},
                              "train_also": HEAD, "aggregation": aggregation}}
        if aggregation == "flexlora":  # heterogeneous ranks: half the clients get half the rank
            out["devices"] = FLEX_DEVICES
        return out
    return make


_SAME = {"compute": {"samples_per_s": 200}, "up_mbps": 10, "down_mbps": 10}
FLEX_DEVICES = {"profiles": {"small": _SAME | {"lora_rank": RANK // 2}, "big": _SAME | {"lora_rank": RANK}},
                "assign": {"small": 0.5, "big": 0.5}}


def _prompt(raw: Raw) -> Raw:
    return raw | {"model": raw["model"] | {"prompt_tokens": PROMPTS},
                  "peft": {"method": "prompt", "train_also": HEAD}}


def _bias(raw: Raw) -> Raw:
    return raw | {"peft": {"method": "bias", "train_also": HEAD}}


def sfprompt(raw: Raw) -> Raw:
    """SFPrompt's scenario (a best guess at the form the split engineer is building; adjust here):
    U-shaped split with the client head = patch embedding + prompts + block 0 (the prompts enter
    before block 0, so the first cut cannot be earlier), server body = block 1, client tail =
    final norm + classifier; EL2N pruning keeps the hardest half (gamma 0.5)."""
    return _prompt(raw) | {"split": {"scheme": "sfprompt", "cuts": ["blocks.0", "blocks.1"],
                                     "sfprompt": {"gamma": 0.5}}}


def sfprompt_client_share(module: torch.nn.Module, s: Scenario, shape: tuple[int, ...], classes: int) -> float:
    """The client's share of forward FLOPs under the scenario's U-shaped cuts (head + tail)."""
    from fedkit.split.describe import cut_table

    assert s.split is not None
    shares = {r.name: r.client_share for r in cut_table(module, shape, classes)}
    first, last = s.split.cut_list
    return shares[first] + 1.0 - shares[last]


@dataclass(frozen=True)
class Method:
    name: str
    family: str
    make: Callable[[Raw], Raw]
    personal: bool = False  # report personalised accuracy (federated evaluation) too


METHODS = [
    Method("full fine-tuning", "full", lambda raw: raw),
    *(Method(f"LoRA, {agg}", "lora-one-factor" if agg in ("ffa", "fedsvd") else "lora", _lora(agg), agg == "fedsa")
      for agg in ("fedit", "ffa", "fedsa", "fedex", "flora", "flexlora", "fedsvd")),
    Method(f"prompt tuning ({PROMPTS} shallow) + head", "prompt", _prompt),
    Method("bias tuning + head", "bias", _bias),
    Method("SFPrompt", "prompt", sfprompt),
    Method("from scratch (full training)", "scratch", _without_checkpoint),
]


def refusal(e: ScenarioError) -> str:
    return "; ".join(f"{loc}: {msg}" if loc else msg for loc, msg in e.problems).replace("|", "/").replace("\n", " ")


def scenario(m: Method, ckpt: Path, rounds: int, seed: int, lr: float) -> Scenario | str:
    """The method's validated scenario, or validation's message."""
    raw = load(FT, [f"model.checkpoint={ckpt}", f"rounds={rounds}", f"seed={seed}", f"train.lr={lr}"]).model_dump(mode="json")
    raw = m.make(raw)
    if m.personal:  # FedSA-LoRA: each client's own B on its slice of the test set, after the last round
        raw["evaluation"] = raw.get("evaluation", {}) | {"federated": True, "federated_test": "matched", "every": rounds}
    try:
        return validate(raw)
    except ScenarioError as e:
        return refusal(e)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(s: Scenario, out: Path) -> dict[str, Any]:
    """Accuracy, training traffic and client compute of one run. Bytes count training tasks only:
    the final federated evaluation's downlink (FedSA) is taken out at the round's wire ratio;
    split learning's activations, gradients and labels (``bytes_*`` of a round) are added to both."""
    t0 = time.perf_counter()
    summary = run_scenario(s, out)
    wall = time.perf_counter() - t0
    rounds, tasks = _jsonl(out / "metrics.jsonl"), _jsonl(out / "clients.jsonl")
    train = [t for t in tasks if t.get("kind") != "evaluate"]
    payload = wire = 0.0
    for r in rounds:
        down = sum(t.get("bytes_down", 0) for t in train if t["round"] == r["round"])
        up = sum(t.get("bytes_up", 0) for t in train if t["round"] == r["round"])
        split = sum(v for k, v in r.items() if k.startswith("bytes_") and k not in NOT_SPLIT)  # smashed data
        payload += down + up + split
        wire += r["wire_bytes_up"] + (r["wire_bytes_down"] * down / r["bytes_down"] if r["bytes_down"] else 0.0) + split
    personal = [r["fed_acc"] for r in rounds if "fed_acc" in r]
    tail = [r["test_acc"] for r in rounds if "test_acc" in r][-TAIL:]
    return {"acc": float(summary["final_accuracy"]), "tail_acc": sum(tail) / len(tail) if tail else 0.0,
            "personal": personal[-1] if personal else None,
            "payload": payload, "wire": wire, "compute_s": sum(t.get("compute_s", 0.0) for t in train), "wall_s": wall}


def model_costs(s: Scenario) -> tuple[int, float]:
    """(trainable parameters, client forward FLOPs per sample) of the model clients build."""
    ds, _ = load_data(s)
    shape, classes = tuple(ds.input_shape), int(ds.num_classes)
    module = build_model(model_spec(s, shape, classes), shape, classes)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.zeros(1, *shape))
    flops = float(counter.get_total_flops())
    if s.split is not None:
        flops *= sfprompt_client_share(build_model(dict(s.model), shape, classes), s, shape, classes)
    return trainable, flops


def sweep(ckpt: Path, rounds: int, tmp: Path, enabled: bool) -> tuple[dict[str, float], dict[str, dict[float, float]]]:
    """Each family's learning rate: the grid value with the best accuracy (mean over TUNE_SEEDS of
    the last TAIL rounds' mean), tried on the family's first method that validates (DEFAULT_LR
    without the sweep)."""
    picked, seen = {}, {}
    for fam, grid in GRID.items():
        picked[fam] = DEFAULT_LR[fam]
        if not enabled:
            continue
        for m in (m for m in METHODS if m.family == fam):
            tried = {(lr, seed): scenario(m, ckpt, rounds, seed, lr) for lr in grid for seed in TUNE_SEEDS}
            if any(isinstance(v, str) for v in tried.values()):
                continue
            score = {k: run(s, tmp / f"sweep-{fam}-{k[0]}-{k[1]}")["tail_acc"] for k, s in tried.items() if not isinstance(s, str)}
            seen[fam] = {lr: sum(score[lr, seed] for seed in TUNE_SEEDS) / len(TUNE_SEEDS) for lr in grid}
            picked[fam] = max(seen[fam], key=lambda lr: seen[fam][lr])
            print(f"sweep {fam} ({m.name}): {seen[fam]} -> lr {picked[fam]}", flush=True)
            break
    return picked, seen


def findings(done: dict[str, dict[str, Any]]) -> list[str]:
    """2-4 sentences from the numbers (mean accuracy over seeds), so a rerun keeps them true."""
    full, scratch = done.get("full fine-tuning"), done.get("from scratch (full training)")
    if full is None or scratch is None:
        return []
    partial = {k: v for k, v in done.items() if k not in ("full fine-tuning", "from scratch (full training)")}
    verdict = "pre-training helps" if full["acc"] > scratch["acc"] + 0.02 else "pre-training buys nothing here"
    out = [f"Findings (mean over seeds): under the same budget {verdict}: full fine-tuning from the checkpoint "
           f"reaches {full['acc']:.3f}, training from scratch {scratch['acc']:.3f}."]
    if partial:
        best = max(partial, key=lambda k: partial[k]["acc"])
        least = min(partial, key=lambda k: partial[k]["wire"])
        b, lst = partial[best], partial[least]
        lora = [v["flops"] for k, v in partial.items() if k.startswith("LoRA")]
        flops = (f" (unmerged LoRA adapters add {lora[0] / full['flops'] - 1:.0%} forward FLOPs per sample here, "
                 "prompts lengthen the sequence)") if lora else ""
        out.append(f"The best partial method is {best} at {b['acc']:.3f} with {b['wire'] / full['wire']:.0%} of "
                   f"full fine-tuning's bytes; the cheapest on the wire, {least} ({lst['wire'] / full['wire']:.0%}), "
                   f"reaches {lst['acc']:.3f}; none saves forward compute{flops}.")
    fedit = done.get("LoRA, fedit")
    same = [k.removeprefix("LoRA, ") for k in ("LoRA, ffa", "LoRA, fedsvd", "LoRA, fedsa")
            if fedit is not None and k in done and abs(done[k]["wire"] - fedit["wire"]) < 0.01 * fedit["wire"]]
    if same:
        out.append(f"{', '.join(same)} put as many bytes on the wire as fedit: the factor a client neither "
                   "trains nor shares (ffa/fedsvd: A; fedsa: B) travels as much as the others.")
    if (fedsa := done.get("LoRA, fedsa")) is not None and fedsa["personal"] is not None:
        out.append(f"FedSA-LoRA's global model (shared A, the initial B = 0, averaged head) scores "
                   f"{fedsa['acc']:.3f}; with each client's own B, {fedsa['personal']:.3f} on the clients' test slices "
                   "(the test set dealt out by each client's label mix: `evaluation.federated_test: matched`).")
    return out


def _accs(vals: list[float]) -> str:
    return " / ".join(f"{v:.3f}" for v in vals)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--no-sweep", action="store_true", help="each family's DEFAULT_LR, no sweep")
    args = p.parse_args()
    torch.set_num_threads(1)
    load0, t_start = os.getloadavg()[0], time.perf_counter()
    seeds = list(range(args.seeds))
    rows: list[str] = []
    done: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ckpt, pm = pretrain(load(PRE), tmp / "model")
        lrs, seen = sweep(ckpt, args.rounds, tmp, not args.no_sweep)
        for m in METHODS:
            lr = lrs[m.family]
            tried = [scenario(m, ckpt, args.rounds, seed, lr) for seed in seeds]
            if isinstance(tried[0], str):
                rows.append(f"| {m.name} | n/a (refused: {tried[0]}) | | | | | | | |")
                print(f"{m.name}: refused: {tried[0]}", flush=True)
                continue
            res = [run(s, tmp / f"{m.name}-{seed}") for seed, s in zip(seeds, tried, strict=True) if not isinstance(s, str)]
            trainable, flops = model_costs(tried[0])  # type: ignore[arg-type]
            done[m.name] = {"acc": sum(r["acc"] for r in res) / len(res), "wire": res[0]["wire"], "flops": flops,
                            "personal": sum(r["personal"] for r in res) / len(res) if m.personal else None}
            personal = _accs([r["personal"] for r in res]) if m.personal else ""
            rows.append(f"| {m.name} | {_accs([r['acc'] for r in res])} | {personal} | {res[0]['wire'] / 1e6:.2f} MB "
                        f"| {res[0]['payload'] / 1e6:.2f} MB | {trainable:,} | {flops / 1e3:.1f} k "
                        f"| {sum(r['compute_s'] for r in res) / len(res):.1f} | {lr:g} |")
            print(rows[-1], flush=True)
    minutes = (time.perf_counter() - t_start) / 60
    sw = "; ".join(f"{fam} {', '.join(f'{lr:g}: {a:.3f}' for lr, a in accs.items())}" for fam, accs in seen.items())
    lines = [
        f"`python benchmarks/bench_peft_vit.py --rounds {args.rounds} --seeds {args.seeds}"
        f"{' --no-sweep' if args.no_sweep else ''}` (`make bench-peft-vit`); torch 1 thread, load average "
        f"{load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; {minutes:.1f} min in all.",
        "",
        f"Pre-trained centrally on digits 0-4 (`scenarios/pretrain_vit_digits.yaml`): source test accuracy "
        f"{pm['before']['accuracy']:.3f} -> {pm['after']['accuracy']:.3f}. Fine-tuned on digits 5-9 "
        f"(`scenarios/finetune_vit_digits.yaml`): 10 clients, Dirichlet 0.5, {args.rounds} rounds, every client "
        f"every round, 1 local epoch of batch 16, Adam. LoRA: peft, r={RANK}, alpha={ALPHA} on "
        f"`{', '.join(TARGETS)}` of both blocks (FlexLoRA: half the clients at rank {RANK // 2} by a `devices:` "
        "profile's `lora_rank`); every partial method also trains `head` in full. SFPrompt: "
        f"`{sfprompt({'model': {}})['split']}`; its bytes include the split channel.",
        "",
        f"Accuracy: global model on the digits 5-9 test set after the last round, seeds {' / '.join(map(str, seeds))}; "
        "personalised (FedSA-LoRA: each client's own B with the global A and head, on its slice of the test set dealt out by its own label mix, "
        "weighted by examples). Bytes: training traffic of seed 0 over the run, up + down, all clients "
        "(wire: the framed messages; payload: the tensors' encoded bytes). Client forward FLOPs per sample: "
        "`torch.utils.flop_counter` on the module a client runs (LoRA's adapters included; SFPrompt: its head + "
        "tail share). Client compute s: the clients' local training time summed over clients and rounds "
        "(mean over seeds); wall time on a shared machine, so it moves with the load (full fine-tuning and "
        "from-scratch training do identical work).",
        "",
        "| method | accuracy | personalised | bytes on the wire | payload | trainable params | client fwd FLOPs / sample "
        "| client compute s | lr |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Learning rates: per family, the best of a small grid by test accuracy averaged over the last {TAIL} "
        f"rounds and seeds {' / '.join(map(str, TUNE_SEEDS))} (not reported; same test set): {sw or 'no sweep (DEFAULT_LR)'}. Refused methods use their family's rate "
        "(SFPrompt: prompt tuning's).",
        "",
        *findings(done),
    ]
    text = write_section(1, "Transfer on the tiny ViT: every method, same budget", lines)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
