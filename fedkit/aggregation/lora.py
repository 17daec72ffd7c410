"""LoRA aggregation variants: what the server does with clients' low-rank adapters.

Notation (REFERENCES.md §J): a frozen weight W0 (out x in) and an adapter ``dW = s B A`` with
``A`` (r x in), ``B`` (out x r), ``s = alpha / r`` (peft's scaling; ``alpha=None``: s = 1).
Client k holds (A_k, B_k) with weight p_k (its num_examples, normalised). The pitfall every
variant answers: ``sum p_k B_k A_k != (sum p_k B_k)(sum p_k A_k)`` (:func:`factor_gap`).

- ``fedit``  Zhang et al., "Towards Building the Federated GPT: Federated Instruction Tuning",
  ICASSP 2024: FedAvg of A and B separately (what FlowerTune does). Inexact, the baseline.
- ``ffa``    Sun et al., "Improving LoRA in Privacy-preserving Federated Learning", ICLR 2024
  (arXiv 2403.12313): A frozen at its shared initialisation, only B trains and travels up; the
  mean of B is then the mean of products exactly. An A that changed is refused.
- ``fedsa``  Guo et al., "Selective Aggregation for Low-Rank Adaptation in Federated Learning",
  ICLR 2025 (arXiv 2410.01463): A is shared and averaged, B is personal and never leaves the
  client; accuracy is personalised (global A with each client's own B).
- ``fedex``  Singhal et al., "FedEx-LoRA: Exact Aggregation for Federated and Efficient
  Fine-Tuning of Foundation Models", arXiv 2410.09432: FedAvg of the factors plus the residual
  ``sum p_k s B_k A_k - s B_avg A_avg`` folded into the frozen base, so the merged model equals
  the average of the clients' merged models.
- ``flora``  Wang et al., "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous
  Low-Rank Adaptations", NeurIPS 2024 (arXiv 2409.05976): stack ``[p_1 s_1 B_1 ... p_K s_K B_K]``
  and ``[A_1; ...; A_K]`` (exact product), clients merge it into W0 and start a fresh adapter;
  the downlink carries rank ``sum r_k``, growing with the number of clients.
- ``flexlora`` Bai et al., "Federated Fine-tuning of Large Language Models under Heterogeneous
  Tasks and Client Resources", NeurIPS 2024 (arXiv 2402.11505): clients of different ranks; the
  server averages full products ``s_k B_k A_k`` and hands each client the truncated SVD at its
  own rank.
- ``fedsvd`` Lee et al., "FedSVD: Adaptive Orthogonalization for Private Federated Learning with
  LoRA", NeurIPS 2025 (arXiv 2505.12805): clients train B only, the server averages B and every
  ``period`` rounds re-factorises ``B A = U S V^T`` into ``A = V^T[:r]`` (so ``A A^T = I``) and
  ``B = U S``; the product is unchanged.

Everything works on *named* adapter tensors: a pair is the ``<prefix>.lora_A[.<adapter>].weight``
and ``<prefix>.lora_B[.<adapter>].weight`` of peft's naming; other tensors (``train_also`` heads)
are averaged as in FedAvg. The variants are pure functions ``(layout, clients, weights) ->``
:class:`LoraOut`; :class:`LoraAggregator` puts one behind the engine's ``Aggregator`` seam
(``init`` / ``step`` on deltas), keeping what a variant changes outside the adapters (the base
offsets of fedex and flora, the round counter of fedsvd) in its checkpointable state.
All arithmetic is float64 in client order, cast back to each tensor's dtype.

Composition with the server steps: FedProx is a client-side term and composes with every variant.
A server optimizer (FedAvgM, FedAdam, FedYogi, FedAdagrad) moves along the reduced *factor* delta,
which is meaningful for fedit, ffa and fedsa. fedsvd takes server SGD only (a re-factorisation
changes B's basis, so optimizer moments would point in the old one). fedex, flora and flexlora take
server SGD with lr=1 only: their point is an exact average of products, which any other step
breaks (flora and flexlora do not even average factors).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedkit.aggregation.base import ServerOpt, State, cast_like, check_int, check_like
from fedkit.aggregation.server_opt import SGD
from fedkit.registry import Registry
from fedkit.rng import rng
from fedkit.types import Params, Update

_F64 = np.float64
_NAME = re.compile(r"^(?P<prefix>.+)\.lora_(?P<factor>[AB])(?:\.[^.]+)?\.weight$")


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=_F64)


# --- layout: which tensors form LoRA pairs ------------------------------------------------------


@dataclass(frozen=True)
class LoraPair:
    """One adapted module: indices of its A (r x in) and B (out x r) in the Params list."""

    prefix: str
    a: int
    b: int
    rank: int
    d_in: int
    d_out: int


@dataclass(frozen=True)
class LoraLayout:
    """The adapter tensors of a model, found by name; ``alpha`` gives the scaling ``alpha / r``."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    pairs: tuple[LoraPair, ...]
    others: tuple[int, ...]
    alpha: float | None = None

    def scaling(self, rank: int) -> float:
        """peft's ``lora_alpha / r`` (1 when the layout has no alpha)."""
        return 1.0 if self.alpha is None else float(self.alpha) / rank

    @property
    def a_indices(self) -> frozenset[int]:
        return frozenset(p.a for p in self.pairs)

    @property
    def b_indices(self) -> frozenset[int]:
        return frozenset(p.b for p in self.pairs)

    def with_rank(self, rank: int) -> LoraLayout:
        """The same modules at another rank (a FlexLoRA client's or FLoRA's stacked layout)."""
        check_int("rank", rank, lo=1)
        shapes = list(self.shapes)
        pairs = []
        for p in self.pairs:
            shapes[p.a] = (rank, p.d_in)
            shapes[p.b] = (p.d_out, rank)
            pairs.append(LoraPair(p.prefix, p.a, p.b, rank, p.d_in, p.d_out))
        return LoraLayout(self.names, tuple(shapes), tuple(pairs), self.others, self.alpha)

    def check(self, params: Params, what: str) -> None:
        """Raise unless ``params`` has this layout's shapes, naming the first bad tensor."""
        if len(params) != len(self.names):
            raise ValueError(f"{what} has {len(params)} arrays, the adapter layout {len(self.names)}")
        for name, shape, a in zip(self.names, self.shapes, params, strict=True):
            if tuple(np.shape(a)) != shape:
                raise ValueError(f"{what}: {name} has shape {tuple(np.shape(a))}, expected {shape}")


def lora_layout(
    names: Sequence[str], shapes: Sequence[Sequence[int]], alpha: float | None = None
) -> LoraLayout:
    """Pair ``...lora_A...weight`` with ``...lora_B...weight`` by their common prefix.

    Refuses an A without its B (or the reverse), ranks that disagree within a pair, and a layout
    with no pair at all, naming the tensor."""
    if len(names) != len(shapes):
        raise ValueError(f"{len(names)} names but {len(shapes)} shapes")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"lora alpha must be > 0, got {alpha!r}")
    found: dict[str, dict[str, int]] = {}
    others: list[int] = []
    for i, name in enumerate(names):
        m = _NAME.match(name)
        if m is None:
            others.append(i)
            continue
        slot = found.setdefault(m["prefix"], {})
        if m["factor"] in slot:
            raise ValueError(f"{name}: a second lora_{m['factor']} for module {m['prefix']!r}")
        slot[m["factor"]] = i
    pairs = []
    for prefix, slot in found.items():
        for f, g in (("A", "B"), ("B", "A")):
            if f in slot and g not in slot:
                raise ValueError(f"{names[slot[f]]} has no matching lora_{g} tensor")
        sa, sb = tuple(shapes[slot["A"]]), tuple(shapes[slot["B"]])
        if len(sa) != 2 or len(sb) != 2 or sa[0] != sb[1]:
            raise ValueError(
                f"module {prefix!r}: lora_A {sa} and lora_B {sb} are not (r, in) and (out, r)"
            )
        pairs.append(LoraPair(prefix, slot["A"], slot["B"], sa[0], sa[1], sb[0]))
    if not pairs:
        raise ValueError("no LoRA adapter tensors (names ending lora_A.weight / lora_B.weight)")
    return LoraLayout(
        tuple(names), tuple(tuple(int(d) for d in s) for s in shapes), tuple(pairs),
        tuple(others), alpha,
    )


# --- what a variant returns --------------------------------------------------------------------


@dataclass(frozen=True)
class LoraOut:
    """A variant's result.

    ``params``: the new global adapter Params (the server's copy, the downlink's default).
    ``base``: prefix -> dense addition to that module's frozen W0 (fedex's residual, flora's merged
    stack); ``{}``: the base is unchanged. ``clients``: client -> the Params that client starts
    from next round when it differs from ``params`` (flexlora's ranks). ``downlink_rank``: prefix
    -> rank of what the downlink carries this round (flora's stack), ``{}`` when it is the
    adapter's own."""

    params: Params
    base: Mapping[str, np.ndarray] = field(default_factory=dict)
    clients: Mapping[str, Params] = field(default_factory=dict)
    downlink_rank: Mapping[str, int] = field(default_factory=dict)
    stacks: Mapping[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # flora: (B, A)


def _weights(weights: Sequence[float], n: int) -> np.ndarray:
    if len(weights) != n:
        raise ValueError(f"{n} clients but {len(weights)} weights")
    w = np.array([float(x) for x in weights], dtype=_F64)
    if np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"client weights must be finite, >= 0 and not all 0, got {list(weights)}")
    return w / w.sum()


def _mean(clients: Sequence[Params], p: np.ndarray, k: int) -> np.ndarray:
    acc = np.zeros(np.shape(clients[0][k]), dtype=_F64)
    for c, w in zip(clients, p, strict=True):
        acc += w * _f64(c[k])
    return acc


def _averaged(layout: LoraLayout, clients: Sequence[Params], p: np.ndarray, idx: Sequence[int],
              like: Params) -> Params:
    """``like`` with the tensors at ``idx`` replaced by the clients' weighted mean."""
    out = [np.array(a, copy=True) for a in like]
    for k in idx:
        out[k] = cast_like(_mean(clients, p, k), np.asarray(like[k]).dtype)
    return out


def _prepare(layout: LoraLayout, clients: Sequence[Params], weights: Sequence[float],
             same_rank: bool = True) -> np.ndarray:
    if not clients:
        raise ValueError("cannot aggregate zero clients")
    for i, c in enumerate(clients):
        if same_rank:
            layout.check(c, f"client {i}")
        elif len(c) != len(layout.names):
            raise ValueError(f"client {i} has {len(c)} arrays, the adapter layout {len(layout.names)}")
    return _weights(weights, len(clients))


def merged_delta(layout: LoraLayout, params: Params, pair: LoraPair) -> np.ndarray:
    """``s B A`` of one pair (float64), at the rank ``params`` actually have."""
    a, b = _f64(params[pair.a]), _f64(params[pair.b])
    return layout.scaling(a.shape[0]) * (b @ a)


def factor_gap(layout: LoraLayout, clients: Sequence[Params], weights: Sequence[float]) -> float:
    """max |sum p_k s B_k A_k - s B_avg A_avg| over all pairs: what FedIT gets wrong."""
    p = _prepare(layout, clients, weights)
    avg = fedit(layout, clients, weights).params
    gap = 0.0
    for pair in layout.pairs:
        exact = sum(w * merged_delta(layout, c, pair) for c, w in zip(clients, p, strict=True))
        gap = max(gap, float(np.max(np.abs(exact - merged_delta(layout, avg, pair)))))
    return gap


# --- the variants --------------------------------------------------------------------------------


def fedit(layout: LoraLayout, clients: Sequence[Params], weights: Sequence[float],
          **_: Any) -> LoraOut:
    """FedAvg of every tensor, A and B separately (Zhang et al., ICASSP 2024)."""
    p = _prepare(layout, clients, weights)
    return LoraOut(_averaged(layout, clients, p, range(len(layout.names)), clients[0]))


def ffa(layout: LoraLayout, clients: Sequence[Params], weights: Sequence[float], *,
        global_params: Params, **_: Any) -> LoraOut:
    """FFA-LoRA (Sun et al., ICLR 2024): average B and the heads; A must be the global A.

    A client whose A differs from ``global_params`` trained what it must not: refused, naming it."""
    p = _prepare(layout, clients, weights)
    layout.check(global_params, "global params")
    for i, c in enumerate(clients):
        for pair in layout.pairs:
            if not np.array_equal(c[pair.a], global_params[pair.a]):
                raise ValueError(
                    f"client {i}: {layout.names[pair.a]} changed, but ffa keeps lora_A frozen at "
                    "its shared initialisation (train only lora_B)"
                )
    keep = [k for k in range(len(layout.names)) if k not in layout.a_indices]
    return LoraOut(_averaged(layout, clients, p, keep, global_params))


def fedsa(layout: LoraLayout, clients: Sequence[Params], weights: Sequence[float], *,
          global_params: Params, **_: Any) -> LoraOut:
    """FedSA-LoRA (Guo et al., ICLR 2025): average A and the heads; B stays on each client.

    The clients' B are never read (they do not travel); the global B stays as it was (the shared
    zero initialisation), and each client goes on with its own (:func:`personalise`)."""
    p = _prepare(layout, clients, weights)
    layout.check(global_params, "global params")
    keep = [k for k in range(len(layout.names)) if k not in layout.b_indices]
    return LoraOut(_averaged(layout, clients, p, keep, global_params))


def personalise(layout: LoraLayout, global_params: Params, own: Params) -> Params:
    """FedSA-LoRA's client view: the global A and heads with the client's own B."""
    out = [np.array(a, copy=True) for a in global_params]
    for pair in layout.pairs:
        out[pair.b] = np.array(own[pair.b], copy=True)
    return out


def fedex(layout: LoraLayout, clients: Sequence[Params], weights: Sequence[float],
          **_: Any) -> LoraOut:
    """FedEx-LoRA (Singhal et al., arXiv 2410.09432): FedAvg of the factors, and the residual
    ``sum p_k s B_k A_k - s B_avg A_avg`` of each pair into the base (``LoraOut.base``)."""
    p = _prepare(layout, clients, weights)
    avg = fedit(layout, clients, weights).params
    base = {}
    for pair in layout.pairs:
        exact = sum(w * merged_delta(layout, c, pair) for c, w in zip(clients, p, strict=True))
        base[pair.prefix] = exact - merged_delta(layout, avg, pair)
    return LoraOut(avg, base=base)


def init_adapter(layout: LoraLayout, like: Params, seed: int, *keys: int | str) -> Params:
    """A fresh adapter as peft makes one (A ~ U(+-1/sqrt(in)), kaiming-uniform with a=sqrt(5);
    B = 0), every A drawn from ``rng(seed, *keys, prefix)``; other tensors copied from ``like``."""
    out = [np.array(a, copy=True) for a in like]
    for pair in layout.pairs:
        bound = 1.0 / np.sqrt(pair.d_in)
        g = rng(seed, *keys, pair.prefix)
        dt = np.asarray(like[pair.a]).dtype
        out[pair.a] = g.uniform(-bound, bound, size=(pair.rank, pair.d_in)).astype(dt)
        out[pair.b] = np.zeros((pair.d_out, pair.rank), dtype=np.asarray(like[pair.b]).dtype)
    return out


def stack(layout: LoraLayout, clients: Sequence[Params], weights: Sequence[float]
          ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """FLoRA's stacked factors per pair: ``(B_stack, A_stack)`` with the scalings and weights
    folded into B, so ``B_stack @ A_stack == sum p_k s_k B_k A_k``; ranks may differ by client."""
    p = _prepare(layout, clients, weights, same_rank=False)
    out = {}
    for pair in layout.pairs:
        bs, as_ = [], []
        for c, w in zip(clients, p, strict=True):
            a, b = _f64(c[pair.a]), _f64(c[pair.b])
            if a.ndim != 2 or b.shape != (pair.d_out, a.shape[0]) or a.shape[1] != pair.d_in:
                raise ValueError(f"{pair.prefix}: client factors {a.shape} / {b.shape} do not pair")
            bs.append(w * layout.scaling(a.shape[0]) * b)
            as_.append(a)
        out[pair.prefix] = (np.concatenate(bs, axis=1), np.concatenate(as_, axis=0))
    return out


def flora(layout: LoraLayout, clients: Sequence[Params], weights: Sequence[float], *,
          global_params: Params, seed: int = 0, round: int = 0, **_: Any) -> LoraOut:
    """FLoRA (Wang et al., NeurIPS 2024): the stacked product goes into the base and every client
    starts the next round from a fresh adapter (A keyed by ``(seed, "flora", round)``)."""
    p = _prepare(layout, clients, weights, same_rank=False)
    stacked = stack(layout, clients, weights)
    fresh = init_adapter(layout, global_params, seed, "flora", round)
    fresh = _averaged(layout, clients, p, layout.others, fresh)
    base = {k: b @ a for k, (b, a) in stacked.items()}
    return LoraOut(fresh, base=base, downlink_rank={k: a.shape[0] for k, (_, a) in stacked.items()},
                   stacks=stacked)


def _svd_factors(delta: np.ndarray, rank: int, scaling: float) -> tuple[np.ndarray, np.ndarray]:
    """``(B, A)`` of rank ``rank`` with ``scaling * B @ A`` the best rank-r approximation of
    ``delta``; ``A`` has orthonormal rows (zero-padded when delta's rank is lower)."""
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    k = min(rank, len(s))
    a = np.zeros((rank, delta.shape[1]), dtype=_F64)
    b = np.zeros((delta.shape[0], rank), dtype=_F64)
    a[:k] = vt[:k]
    b[:, :k] = u[:, :k] * s[:k] / scaling
    return b, a


def flexlora(layout: LoraLayout, clients: Sequence[Params], weights: Sequence[float], *,
             ranks: Sequence[int] | None = None, client_ids: Sequence[str] | None = None,
             **_: Any) -> LoraOut:
    """FlexLoRA (Bai et al., NeurIPS 2024): average the full ``s_k B_k A_k`` of clients of any
    rank, give the server its layout's rank and each client (``client_ids``, ranks ``ranks``)
    the truncated SVD at its own."""
    p = _prepare(layout, clients, weights, same_rank=False)
    dense = {}
    for pair in layout.pairs:
        dense[pair.prefix] = sum(
            w * merged_delta(layout, c, pair) for c, w in zip(clients, p, strict=True)
        )
    def at_rank(rank: int) -> Params:
        sub = layout.with_rank(rank)
        out: Params = [np.array(a, copy=True) for a in clients[0]]
        out = _averaged(layout, clients, p, layout.others, out)
        for pair in sub.pairs:
            b, a = _svd_factors(dense[pair.prefix], rank, sub.scaling(rank))
            out[pair.a] = a.astype(np.asarray(clients[0][pair.a]).dtype)
            out[pair.b] = b.astype(np.asarray(clients[0][pair.b]).dtype)
        return out
    per: dict[str, Params] = {}
    if client_ids is not None:
        rks = ranks if ranks is not None else [layout.pairs[0].rank] * len(client_ids)
        if len(rks) != len(client_ids):
            raise ValueError(f"{len(client_ids)} client ids but {len(rks)} ranks")
        per = {c: at_rank(int(r)) for c, r in zip(client_ids, rks, strict=True)}
    return LoraOut(at_rank(layout.pairs[0].rank), clients=per)


def refactor(layout: LoraLayout, params: Params) -> Params:
    """FedSVD's re-factorisation: ``B A = U S V^T`` -> ``A = V^T[:r]``, ``B = U S`` (same product,
    ``A A^T = I``)."""
    out = [np.array(a, copy=True) for a in params]
    for pair in layout.pairs:
        b, a = _svd_factors(_f64(params[pair.b]) @ _f64(params[pair.a]), pair.rank, 1.0)
        out[pair.a] = a.astype(np.asarray(params[pair.a]).dtype)
        out[pair.b] = b.astype(np.asarray(params[pair.b]).dtype)
    return out


def svd_due(round: int, period: int = 1, warmup: int = 0) -> bool:
    """FedSVD's schedule: re-factorise after round ``round`` (0-based) when ``round >= warmup``
    and ``(round + 1) % period == 0`` (as ``reinit_lora`` in seanie12/fed-svd)."""
    return round >= warmup and (round + 1) % period == 0


def fedsvd(layout: LoraLayout, clients: Sequence[Params], weights: Sequence[float], *,
           global_params: Params, round: int = 0, period: int = 1, warmup: int = 0,
           **_: Any) -> LoraOut:
    """FedSVD (Lee et al., NeurIPS 2025): as ffa (A frozen, B averaged), then re-factorise when
    :func:`svd_due`."""
    out = ffa(layout, clients, weights, global_params=global_params).params
    return LoraOut(refactor(layout, out) if svd_due(round, period, warmup) else out)


# --- registry ------------------------------------------------------------------------------------


Variant = Callable[..., LoraOut]


@dataclass(frozen=True)
class LoraVariant:
    """One aggregation variant and the client-side roles of its factors.

    ``train``: factors the clients update ("A", "B"); ``up``: factors that travel to the server;
    ``personal``: factors each client keeps instead of the global's; ``opt``: which server steps
    compose ("any", "sgd": SGD of any lr, "exact": SGD with lr=1 only)."""

    name: str
    fn: Variant
    train: frozenset[str]
    up: frozenset[str]
    personal: frozenset[str] = frozenset()
    opt: str = "any"
    base: bool = False  # changes the frozen base (fedex, flora)
    ranks: bool = False  # clients may have their own ranks (flexlora, flora)

    def _select(self, names: Sequence[str], factors: frozenset[str]) -> tuple[str, ...]:
        keep = []
        for n in names:
            m = _NAME.match(n)
            if m is None or m["factor"] in factors:
                keep.append(n)
        return tuple(keep)

    def trainable(self, names: Sequence[str]) -> tuple[str, ...]:
        """The names a client's optimizer may update (ffa/fedsvd: every lora_A is frozen)."""
        return self._select(names, self.train)

    def uplink(self, names: Sequence[str]) -> tuple[str, ...]:
        """The names a client must send (fedsa: no lora_B; ffa/fedsvd: no lora_A)."""
        return self._select(names, self.up)

    def kept(self, names: Sequence[str]) -> tuple[str, ...]:
        """The names a client keeps from its own last round instead of loading the global's."""
        return tuple(n for n in names if (m := _NAME.match(n)) and m["factor"] in self.personal)


_AB, _A, _B = frozenset("AB"), frozenset("A"), frozenset("B")

LORA_AGGREGATIONS: Registry[LoraVariant] = Registry("LoRA aggregation")
"""``peft.aggregation`` name -> variant (function, factor roles, composable server steps)."""

for _v in (
    LoraVariant("fedit", fedit, _AB, _AB),
    LoraVariant("ffa", ffa, _B, _B),
    LoraVariant("fedsa", fedsa, _AB, _A, personal=_B),
    LoraVariant("fedex", fedex, _AB, _AB, opt="exact", base=True),
    LoraVariant("flora", flora, _AB, _AB, opt="exact", base=True, ranks=True),
    LoraVariant("flexlora", flexlora, _AB, _AB, opt="exact", ranks=True),
    LoraVariant("fedsvd", fedsvd, _B, _B, opt="sgd"),
):
    LORA_AGGREGATIONS.register(_v.name)(_v)


def lora_variant(name: str) -> LoraVariant:
    """The registered variant (an unknown name: a ValueError with a "did you mean")."""
    return LORA_AGGREGATIONS[name]


def check_server_opt(variant: LoraVariant, server_opt: ServerOpt) -> None:
    """Refuse a server step the variant's maths does not allow, saying which it takes."""
    if variant.opt == "any":
        return
    if not isinstance(server_opt, SGD):
        raise ValueError(
            f"LoRA aggregation {variant.name!r} composes with server SGD only "
            f"(got {type(server_opt).__name__}); use strategy fedavg or fedprox"
        )
    if variant.opt == "exact" and server_opt.lr != 1.0:
        raise ValueError(
            f"LoRA aggregation {variant.name!r} is an exact average of products: server lr must "
            f"be 1, got {server_opt.lr}"
        )


# --- DP-LoRA ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraDP:
    """DP-LoRA (Liu et al., arXiv 2312.17493) as central DP-FedAvg over the uplink tensors only:
    each client's uploaded delta clipped to L2 norm ``clip_norm``, summed, divided by
    ``expected_clients`` and noised with std ``noise_multiplier * clip_norm / expected_clients``
    (:func:`fedkit.secure.dp.dp_mean`, noise keyed by ``(seed, "dp-noise", round)``; account it
    with :func:`fedkit.secure.accountant.epsilon`). Tensors that do not travel get no noise, so
    ffa's and fedsvd's A stay exactly shared; one-factor variants spend the whole budget on B
    (REFERENCES.md §E4/E5: noising both factors multiplies noise in the product)."""

    clip_norm: float
    noise_multiplier: float
    expected_clients: float
    poisson: bool = False  # Poisson sampling: expected_clients is q x population (dp_mean)


def dp_lora_delta(layout: LoraLayout, variant: LoraVariant, deltas: Sequence[Params], dp: LoraDP,
                  *, seed: int, round: int) -> Params:
    """The DP mean of the clients' deltas on ``variant.uplink`` tensors; zeros elsewhere."""
    from fedkit.secure.dp import dp_mean  # fedkit.secure imports fedkit.aggregation.base

    up = [k for k, n in enumerate(layout.names) if n in set(variant.uplink(layout.names))]
    mean = dp_mean([[d[k] for k in up] for d in deltas], clip_norm=dp.clip_norm,
                   noise_multiplier=dp.noise_multiplier, expected_clients=dp.expected_clients,
                   seed=seed, round=round, poisson=dp.poisson)
    out = [np.zeros(np.shape(a), dtype=np.asarray(a).dtype) for a in deltas[0]]
    for k, m in zip(up, mean, strict=True):
        out[k] = m
    return out


# --- the engine seam -----------------------------------------------------------------------------

_BASE, _ROUND, _STACK = "lora.base.", "lora.round", "lora.stack."


@dataclass(frozen=True)
class LoraAggregator:
    """A variant behind the ``Aggregator`` protocol: ``init(params)``, ``step(state, params,
    updates) -> (state, params)`` with updates as deltas (local - what that client was sent).

    The reduced factor delta goes through ``server_opt`` (for the variants that allow it). State
    holds the optimizer's state, ``lora.round`` (rounds aggregated) and, for fedex and flora,
    ``lora.base.<i>``: the accumulated dense offset of pair i's frozen W0 (:meth:`base_offsets`).
    ``ranks``: client -> rank (flexlora, flora); :meth:`for_client` is what to send that client.
    Tensors a client does not upload (``variant.uplink``) are taken from what it was sent.

    Through the round engine (fedkit/scenario/lora.py) :meth:`downlink` is each client's whole
    downlink: its adapter, then :meth:`base_extras`, the base change it folds into its frozen
    weights (fedex: the accumulated dense residual; flora: every round's stack so far, kept in
    ``lora.stack.<i>``, so a client that sat rounds out or restarted still rebuilds the base
    exactly; its rank, and the downlink, grow by the participants' ranks each round).
    :meth:`check_delta` is the acceptance stage's refusal of an update that does not fit."""

    variant: LoraVariant
    layout: LoraLayout
    server_opt: ServerOpt = field(default_factory=SGD)
    seed: int = 0
    ranks: Mapping[str, int] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)  # fedsvd: period, warmup
    dp: LoraDP | None = None  # DP-LoRA: clip + noise the uplink tensors (fedit, ffa, fedsa, fedsvd)

    def __post_init__(self) -> None:
        check_server_opt(self.variant, self.server_opt)
        if self.dp is not None and self.variant.opt == "exact":
            raise ValueError(f"DP-LoRA is a noised mean of factor deltas; {self.variant.name!r} "
                             "does not average factors (use fedit, ffa, fedsa or fedsvd)")
        if self.ranks and not self.variant.ranks:
            raise ValueError(f"LoRA aggregation {self.variant.name!r} needs one rank for all clients; "
                             "per-client ranks need flexlora or flora")
        top = self.layout.pairs[0].rank
        for c, r in self.ranks.items():
            if check_int(f"rank of client {c!r}", r, lo=1) > top:
                raise ValueError(f"client {c!r} has LoRA rank {r}, above the server's {top} "
                                 "(the global adapter's rank must be the largest)")

    def init(self, params: Params) -> State:
        self.layout.check(params, "global params")
        state = dict(self.server_opt.init(params))
        state[_ROUND] = [np.array(0, dtype=np.int64)]
        if self.variant.base:
            for i, pair in enumerate(self.layout.pairs):
                state[f"{_BASE}{i}"] = [np.zeros((pair.d_out, pair.d_in), dtype=_F64)]
        if self.base_kind == "factors":  # flora: every round's stack, so far (rank 0 at first)
            for i, pair in enumerate(self.layout.pairs):
                state[f"{_STACK}{i}"] = [np.zeros((pair.d_out, 0), dtype=_F64),
                                         np.zeros((0, pair.d_in), dtype=_F64)]
        return state

    @property
    def base_kind(self) -> str | None:
        """How the base change travels down: ``dense`` (fedex: the accumulated residual, one
        out x in tensor per pair), ``factors`` (flora: the stacks of every round so far, B then
        A per pair, rank growing by the participants' ranks each round), None (base unchanged)."""
        if not self.variant.base:
            return None
        return "factors" if self.variant.name == "flora" else "dense"

    def base_extras(self, state: State, dtype: Any = np.float32) -> Params:
        """The tensors after the adapter in every downlink (:meth:`downlink`): what a client
        folds into its frozen base (:func:`fedkit.peft.model.fold_base`); [] when it is unchanged."""
        dt = np.dtype(dtype)
        if self.base_kind == "dense":
            return [state[f"{_BASE}{i}"][0].astype(dt) for i in range(len(self.layout.pairs))]
        if self.base_kind == "factors":
            return [a.astype(dt) for i in range(len(self.layout.pairs)) for a in state[f"{_STACK}{i}"]]
        return []

    def downlink(self, params: Params, state: State, clients: Sequence[str]) -> dict[str, Params]:
        """What each client is sent: its adapter (:meth:`for_client`) and the base extras.
        Clients of one rank get the same list object (the engine encodes it once)."""
        extras = self.base_extras(state, np.asarray(params[self.layout.pairs[0].a]).dtype)
        by_rank: dict[int, Params] = {}
        out = {}
        for c in clients:
            r = self.rank_of(c)
            if r not in by_rank:
                by_rank[r] = list(self.for_client(params, c)) + extras
            out[c] = by_rank[r]
        return out

    def shapes_for(self, client: str) -> list[tuple[int, ...]]:
        """The shapes of the adapter tensors ``client`` trains and sends (its rank's)."""
        return list(self.layout.with_rank(self.rank_of(client)).shapes)

    def check_delta(self, client: str, delta: Params) -> None:
        """Refuse an update this variant cannot take, naming the client and tensor (a
        ValueError; the acceptance stage turns it into a refusal): a count or shape that is not
        the adapter's at the client's rank, or a change to a factor clients must not train
        (ffa / fedsvd: any lora_A)."""
        who = f"update from client {client!r}"
        shapes = self.shapes_for(client)
        if len(delta) != len(shapes):
            raise ValueError(f"{who} has {len(delta)} arrays, the adapter layout {len(shapes)}")
        frozen = set(self.layout.names) - set(self.variant.trainable(self.layout.names))
        for name, s, d in zip(self.layout.names, shapes, delta, strict=True):
            if tuple(np.shape(d)) != s:
                raise ValueError(f"{who}: {name} has shape {tuple(np.shape(d))}, expected {s} "
                                 f"(rank {self.rank_of(client)})")
            if name in frozen and np.any(np.asarray(d) != 0):
                raise ValueError(f"{who}: {name} changed, but {self.variant.name} keeps it frozen "
                                 f"(clients train only {', '.join(sorted(self.variant.train))})")

    @property
    def adaptive(self) -> None:
        """DP-LoRA clips at a fixed norm (what fedkit.runtime.privacy.DpPlan asks)."""
        return None

    def clip_for_next(self, state: State) -> float:
        """DP-LoRA: the clip norm the next round's clients use (fixed)."""
        assert self.dp is not None
        return float(self.dp.clip_norm)

    def released(self, state: State) -> dict[str, float]:
        """DP-LoRA: what each release used (clip norm, noise std on the mean of the uplink tensors)."""
        from fedkit.secure.dp import central_std

        assert self.dp is not None
        return {"dp_clip_norm": float(self.dp.clip_norm),
                "dp_noise_std": central_std(self.dp.noise_multiplier, self.dp.clip_norm, self.dp.expected_clients)}

    def base_offsets(self, state: State) -> dict[str, np.ndarray]:
        """prefix -> dense offset to add to that module's frozen W0 (``{}``: base unchanged)."""
        return {p.prefix: state[f"{_BASE}{i}"][0] for i, p in enumerate(self.layout.pairs)
                if f"{_BASE}{i}" in state}

    def rank_of(self, client: str) -> int:
        return int(self.ranks.get(client, self.layout.pairs[0].rank))

    def for_client(self, params: Params, client: str) -> Params:
        """The adapter Params to send ``client``: its rank's truncation (flexlora), or fresh
        factors at its rank (flora), else the global params themselves."""
        r = self.rank_of(client)
        if r == self.layout.pairs[0].rank:
            return params
        sub = self.layout.with_rank(r)
        if self.variant.name == "flora":
            return init_adapter(sub, params, self.seed, "flora", "client-rank", client)
        out = [np.array(a, copy=True) for a in params]
        for pair in sub.pairs:
            full = merged_delta(self.layout, params, pair)
            b, a = _svd_factors(full, r, sub.scaling(r))
            out[pair.a] = a.astype(np.asarray(params[pair.a]).dtype)
            out[pair.b] = b.astype(np.asarray(params[pair.b]).dtype)
        return out

    def check_update(self, update: Update, params: Params) -> None:
        """:meth:`check_delta` of ``update`` (``params``: the global model it was sent)."""
        self.check_delta(update.client, update.delta)

    def clients_of(self, params: Params, updates: Sequence[Update]) -> list[Params]:
        """Each client's local adapter: what it was sent plus its delta; tensors it does not
        upload (fedsa's B) are taken as sent."""
        up = set(self.variant.uplink(self.layout.names))
        out = []
        for u in updates:
            self.check_update(u, params)
            sent = self.for_client(params, u.client)
            out.append([
                cast_like(_f64(s) + _f64(d), np.asarray(s).dtype) if name in up
                else np.array(s, copy=True)
                for name, s, d in zip(self.layout.names, sent, u.delta, strict=True)
            ])
        return out

    def step_out(self, state: State, params: Params, updates: Sequence[Update]
                 ) -> tuple[State, LoraOut]:
        """One aggregation with the variant's whole result (base offsets, per-client params)."""
        rnd = int(state[_ROUND][0])
        clients = self.clients_of(params, updates)
        if self.dp is not None:  # the DP mean replaces the weighted mean of the factors
            deltas = [[_f64(c) - _f64(g) for c, g in zip(local, params, strict=True)]
                      for local in clients]
            d = dp_lora_delta(self.layout, self.variant, deltas, self.dp, seed=self.seed, round=rnd)
            out = LoraOut([cast_like(_f64(g) + _f64(x), np.asarray(g).dtype)
                           for g, x in zip(params, d, strict=True)])
        else:
            fn = ffa if self.variant.name == "fedsvd" else self.variant.fn  # svd after the server step
            out = fn(
                self.layout, clients, [u.num_examples for u in updates], global_params=params,
                seed=self.seed, round=rnd, client_ids=[u.client for u in updates],
                ranks=[self.rank_of(u.client) for u in updates], **self.options,
            )
        new = dict(state)
        new[_ROUND] = [np.array(rnd + 1, dtype=np.int64)]
        for i, pair in enumerate(self.layout.pairs):
            if pair.prefix in out.base:
                new[f"{_BASE}{i}"] = [state[f"{_BASE}{i}"][0] + out.base[pair.prefix]]
            if pair.prefix in out.stacks and f"{_STACK}{i}" in state:
                (b, a), (hb, ha) = out.stacks[pair.prefix], state[f"{_STACK}{i}"]
                new[f"{_STACK}{i}"] = [np.concatenate([hb, b], axis=1), np.concatenate([ha, a], axis=0)]
        opt_state = {k: v for k, v in state.items() if not k.startswith("lora.")}
        delta = [_f64(n) - _f64(o) for n, o in zip(out.params, params, strict=True)]
        check_like(delta, params, what="reduced LoRA delta")
        if self.variant.opt == "exact":  # SGD lr=1: the variant's result is the new model
            moved = out.params
        else:
            opt_state, moved = self.server_opt.apply(opt_state, params, delta)
            if self.variant.name == "fedsvd" and svd_due(rnd, **self.options):
                moved = refactor(self.layout, moved)  # after the server step: A A^T = I again
        new.update(opt_state)
        return new, LoraOut(moved, out.base, out.clients, out.downlink_rank, out.stacks)

    def step(self, state: State, params: Params, updates: Sequence[Update]) -> tuple[State, Params]:
        if not updates:
            return state, params
        state, out = self.step_out(state, params, updates)
        return state, out.params


def make_lora_aggregator(
    name: str,
    names: Sequence[str],
    shapes: Sequence[Sequence[int]],
    *,
    alpha: float | None = None,
    server_opt: ServerOpt | None = None,
    seed: int = 0,
    ranks: Mapping[str, int] | None = None,
    dp: LoraDP | None = None,
    **options: Any,
) -> LoraAggregator:
    """Build ``peft.aggregation: NAME`` over the travelling tensors ``names`` / ``shapes``.

    ``server_opt`` is the scenario strategy's server step (``make_aggregator(...).server_opt``;
    default SGD lr=1). ``options``: fedsvd's ``period`` (default 1) and ``warmup`` (0)."""
    variant = lora_variant(name)
    allowed = {"fedsvd": {"period", "warmup"}}.get(name, set())
    for key in options:
        if key not in allowed:
            raise ValueError(f"LoRA aggregation {name!r} has no option {key!r}; "
                             f"allowed: {', '.join(sorted(allowed)) or 'none'}")
    if "period" in options:
        check_int("period", options["period"], lo=1)
    if "warmup" in options:
        check_int("warmup", options["warmup"], lo=0)
    return LoraAggregator(variant, lora_layout(names, shapes, alpha), server_opt or SGD(),
                          seed, dict(ranks or {}), dict(options), dp)


def wire_bytes(agg: LoraAggregator, clients: Sequence[str], itemsize: int = 4
               ) -> dict[str, dict[str, int]]:
    """Payload bytes (tensor data, no framing) per client in one round where ``clients`` take
    part: ``{client: {"up": ..., "down": ...}}``.

    up: the tensors the variant uploads, at the client's rank. down: what the client must
    receive: ffa the B's and heads (A never changes), fedsa A and heads (B is personal), fedsvd
    both factors (A changes when it re-factorises), fedex the factors plus each pair's dense
    residual for the base, flora the stack of every participant's factors (rank sum r_k: grows
    with the number of clients; the fresh adapter is seeded, not sent), flexlora the factors at
    the client's rank. These are the papers' per-round costs; the round engine's flora downlink
    (:meth:`LoraAggregator.downlink`) also carries the fresh adapter and every earlier round's
    stack, so clients hold no base state, and its bytes_down grow round after round."""
    lay, v = agg.layout, agg.variant
    heads = sum(int(np.prod(lay.shapes[k])) for k in lay.others)

    def factors(r: int, which: str) -> int:
        return sum(r * (p.d_in if f == "A" else p.d_out) for p in lay.pairs for f in which)

    stack_rank = sum(agg.rank_of(c) for c in clients)
    out = {}
    for c in clients:
        r = agg.rank_of(c)
        up = heads + factors(r, "".join(sorted(v.up)))
        if v.name == "ffa":
            down = heads + factors(r, "B")
        elif v.name == "fedsa":
            down = heads + factors(r, "A")
        elif v.name == "fedex":
            down = heads + factors(r, "AB") + sum(p.d_in * p.d_out for p in lay.pairs)
        elif v.name == "flora":
            down = heads + factors(stack_rank, "AB")
        else:
            down = heads + factors(r, "AB")
        out[c] = {"up": up * itemsize, "down": down * itemsize}
    return out


def ranks_from_devices(profile_of: Mapping[str, str], profile_ranks: Mapping[str, int]
                       ) -> dict[str, int]:
    """client -> rank from each client's device profile (``devices:``) and a rank per profile.

    Every profile in use needs a rank; the error names the first one without."""
    out = {}
    for client, prof in profile_of.items():
        if prof not in profile_ranks:
            raise ValueError(f"device profile {prof!r} (client {client!r}) has no LoRA rank; "
                             f"ranks are given for: {', '.join(sorted(profile_ranks)) or 'none'}")
        out[client] = check_int(f"rank of profile {prof!r}", profile_ranks[prof], lo=1)
    return out
