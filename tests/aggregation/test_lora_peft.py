"""Every LoRA aggregation variant fine-tunes a peft-wrapped fedkit ``mlp`` on digits, in-process.

The benchmark's harness (benchmarks/bench_lora.py) stands in for the engine: the base MLP is
pre-trained on digits 0-4 only (the "source" task), then LoRA adapters (r=4, alpha=8, on both
Linear layers) are fine-tuned federatedly on all ten digits, four Dirichlet(0.5) clients. Each
variant runs through :class:`~fedkit.aggregation.lora.LoraAggregator` exactly as the engine
would call it (deltas in, global adapter out, base offsets and per-client ranks from its
methods); FedSA-LoRA reports personalised accuracy on each client's held-out samples.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedkit.aggregation.lora import LoraAggregator, make_lora_aggregator, personalise
from fedkit.types import Update

pytest.importorskip("peft")
from benchmarks.bench_lora import ALPHA, RANK, Models, acc, train  # noqa: E402  (the benchmark's harness)
from benchmarks.bench_lora import world as make_world  # noqa: E402

SEED, ROUNDS, STEPS = 0, 5, 20
LR = {"ffa": 0.05, "fedsvd": 0.05}  # one-factor training wants a larger lr (as FFA-LoRA notes)
CLIENTS = ("c0", "c1", "c2", "c3")


@pytest.fixture(scope="module")
def world():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide MLP: extra threads only contend (10x slower here)
    try:
        yield make_world(SEED, len(CLIENTS))
    finally:
        torch.set_num_threads(threads)


def _run(variant: str, world, ranks=None):
    x, y, split, test = world["x"], world["y"], world["split"], world["test"]
    h = Models(world["base"], SEED)
    m0 = h.get(RANK)
    names = h.names(m0)
    init = h.params(m0)
    agg: LoraAggregator = make_lora_aggregator(
        variant, names, [a.shape for a in init], alpha=ALPHA, seed=SEED, ranks=ranks)
    trainable = set(agg.variant.trainable(names))
    state, params = agg.init(init), init
    own = {c: init for c in CLIENTS}  # fedsa: each client's personal B

    def personalacc(p, offsets):
        accs = []
        for c in CLIENTS:
            mine = personalise(agg.layout, p, own[c]) if agg.variant.personal else p
            m = h.load(RANK, mine, offsets)
            hold = split[c][1]
            accs.append(acc(m, x[hold], y[hold]))
        return float(np.mean(accs))

    before = (acc(h.load(RANK, init, {}), *test), personalacc(init, {}))
    for rnd in range(ROUNDS):
        offsets = agg.base_offsets(state)
        ups = []
        for c in CLIENTS:
            sent = agg.for_client(params, c)
            start = personalise(agg.layout, sent, own[c]) if agg.variant.personal else sent
            m = h.load(agg.rank_of(c), start, offsets, trainable)
            train(m, world, split[c][0], rnd, c, STEPS, LR.get(variant, 0.02))
            local = h.params(m)
            own[c] = local
            ups.append(Update(c, [a - s for a, s in zip(local, sent, strict=True)], len(split[c][0])))
        state, params = agg.step(state, params, ups)
    offsets = agg.base_offsets(state)
    after = (acc(h.load(RANK, params, offsets), *test), personalacc(params, offsets))
    return before, after, agg, params


@pytest.mark.parametrize("variant", ["fedit", "ffa", "fedex", "flora", "fedsvd"])
def test_variant_improves_global_accuracy(variant, world):
    (acc0, _), (acc1, _), agg, params = _run(variant, world)
    assert acc0 < 0.6  # the base knows digits 0-4 only
    assert acc1 > acc0 + 0.15, (variant, acc0, acc1)
    if variant in ("ffa", "fedsvd"):
        names = agg.layout.names
        assert agg.variant.uplink(names) == tuple(n for n in names if "lora_B" in n)
    if variant == "fedsvd":
        a = params[agg.layout.pairs[0].a]
        np.testing.assert_allclose(a @ a.T, np.eye(RANK), atol=1e-5)


def test_fedsa_improves_personalised_accuracy(world):
    (_, p0), (_, p1), agg, _ = _run("fedsa", world)
    assert p1 > p0 + 0.2, (p0, p1)


def test_flexlora_heterogeneous_ranks_improve_accuracy(world):
    ranks = {"c0": 1, "c1": 2, "c2": 4, "c3": 4}
    (acc0, _), (acc1, _), agg, params = _run("flexlora", world, ranks=ranks)
    assert acc1 > acc0 + 0.15, (acc0, acc1)
    assert agg.for_client(params, "c0")[0].shape == (1, 64)
