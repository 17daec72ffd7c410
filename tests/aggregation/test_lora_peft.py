"""Every LoRA aggregation variant fine-tunes a peft-wrapped fedkit ``mlp`` on digits, in-process.

A small harness stands in for the engine until the PEFT model core is wired: the base MLP is
pre-trained on digits 0-4 only (the "source" task), then LoRA adapters (r=4, alpha=8, on both
Linear layers) are fine-tuned federatedly on all ten digits, four Dirichlet(0.5) clients. Each
variant runs through :class:`~fedkit.aggregation.lora.LoraAggregator` exactly as the engine
would call it (deltas in, global adapter out, base offsets and per-client ranks from its
methods); FedSA-LoRA reports personalised accuracy on each client's held-out samples.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedkit.aggregation.lora import LoraAggregator, make_lora_aggregator, personalise
from fedkit.data.datasets import load_digits
from fedkit.data.partition import partition
from fedkit.models.registry import mlp
from fedkit.models.train import keyed_torch
from fedkit.rng import rng, seed_int
from fedkit.types import Update

peft = pytest.importorskip("peft")

SEED, ALPHA, RANK, ROUNDS, STEPS = 0, 8, 4, 5, 20
LR = {"ffa": 0.05, "fedsvd": 0.05}  # one-factor training wants a larger lr (as FFA-LoRA notes)
CLIENTS = ("c0", "c1", "c2", "c3")
TARGETS = ["1", "3"]  # mlp = Flatten, Linear(64, 32), ReLU, Linear(32, 10)


@pytest.fixture(scope="module")
def world():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide MLP: extra threads only contend (10x slower here)
    try:
        yield _world()
    finally:
        torch.set_num_threads(threads)


def _world():
    ds = load_digits(SEED)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    with keyed_torch(seed_int(SEED, "base")):
        base = mlp((64,), 10, hidden=(32,))
    src = torch.nonzero(y < 5).squeeze(1)
    opt = torch.optim.Adam(base.parameters(), lr=0.01)
    g = rng(SEED, "pretrain")
    for _ in range(150):
        idx = src[torch.from_numpy(g.integers(0, len(src), 64))]
        opt.zero_grad()
        F.cross_entropy(base(x[idx]), y[idx]).backward()
        opt.step()
    parts = partition("dirichlet", ds.y_train, len(CLIENTS), SEED, alpha=0.5)
    split = {}
    for c, p in zip(CLIENTS, parts, strict=True):
        p = rng(SEED, "holdout", c).permutation(p)
        cut = int(0.8 * len(p))
        split[c] = (torch.from_numpy(p[:cut]), torch.from_numpy(p[cut:]))
    test = (torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test))
    return base, x, y, split, test


class Harness:
    """One peft model per rank over a private copy of the base; adapters swapped in by name."""

    def __init__(self, base: torch.nn.Module) -> None:
        self.base = base
        self.models: dict[int, torch.nn.Module] = {}

    def model(self, r: int) -> torch.nn.Module:
        if r not in self.models:
            with keyed_torch(seed_int(SEED, "lora-init", r)):
                cfg = peft.LoraConfig(r=r, lora_alpha=ALPHA, target_modules=TARGETS)
                self.models[r] = peft.get_peft_model(copy.deepcopy(self.base), cfg)
        return self.models[r]

    @staticmethod
    def names(m: torch.nn.Module) -> list[str]:
        return [n for n, _ in m.named_parameters() if "lora_" in n]

    def load(self, r: int, params, offsets, trainable=None) -> torch.nn.Module:
        m = self.model(r)
        named = dict(m.named_parameters())
        with torch.no_grad():
            for n, a in zip(self.names(m), params, strict=True):
                named[n].copy_(torch.from_numpy(np.asarray(a, dtype=np.float32)))
                named[n].requires_grad_(trainable is None or n in trainable)
            for prefix, w0 in zip(TARGETS, self._w0(), strict=True):
                key = f"base_model.model.{prefix}"
                off = offsets.get(key)
                w = w0 if off is None else w0 + torch.from_numpy(off.astype(np.float32))
                m.get_submodule(key).base_layer.weight.copy_(w)
        return m

    def _w0(self):
        return [self.base[int(t)].weight.detach() for t in TARGETS]

    def params(self, m: torch.nn.Module):
        named = dict(m.named_parameters())
        return [named[n].detach().numpy().copy() for n in self.names(m)]


def _train(m, x, y, idx, rnd, client, lr):
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr)
    g = rng(SEED, "batches", rnd, client)
    m.train()
    for _ in range(STEPS):
        b = idx[torch.from_numpy(g.integers(0, len(idx), 32))]
        opt.zero_grad()
        F.cross_entropy(m(x[b]), y[b]).backward()
        opt.step()


@torch.no_grad()
def _acc(m, x, y) -> float:
    m.eval()
    return float((m(x).argmax(1) == y).float().mean())


def _run(variant: str, world, ranks=None):
    base, x, y, split, test = world
    h = Harness(base)
    m0 = h.model(RANK)
    names = h.names(m0)
    init = h.params(m0)
    agg: LoraAggregator = make_lora_aggregator(
        variant, names, [a.shape for a in init], alpha=ALPHA, seed=SEED, ranks=ranks)
    trainable = set(agg.variant.trainable(names))
    state, params = agg.init(init), init
    own = {c: init for c in CLIENTS}  # fedsa: each client's personal B

    def personal_acc(p, offsets):
        accs = []
        for c in CLIENTS:
            mine = personalise(agg.layout, p, own[c]) if agg.variant.personal else p
            m = h.load(RANK, mine, offsets)
            hold = split[c][1]
            accs.append(_acc(m, x[hold], y[hold]))
        return float(np.mean(accs))

    before = (_acc(h.load(RANK, init, {}), *test), personal_acc(init, {}))
    for rnd in range(ROUNDS):
        offsets = agg.base_offsets(state)
        ups = []
        for c in CLIENTS:
            sent = agg.for_client(params, c)
            start = personalise(agg.layout, sent, own[c]) if agg.variant.personal else sent
            m = h.load(agg.rank_of(c), start, offsets, trainable)
            _train(m, x, y, split[c][0], rnd, c, LR.get(variant, 0.02))
            local = h.params(m)
            own[c] = local
            ups.append(Update(c, [a - s for a, s in zip(local, sent, strict=True)], len(split[c][0])))
        state, params = agg.step(state, params, ups)
    offsets = agg.base_offsets(state)
    after = (_acc(h.load(RANK, params, offsets), *test), personal_acc(params, offsets))
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
