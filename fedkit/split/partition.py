"""Cut a model at named modules into parts whose composition is exactly the original forward.

Split learning (Gupta & Raskar 2018, "Distributed learning of deep neural network over multiple
agents"; Vepakomma et al. 2018, "Split learning for health") writes the model as
f = f_server o f_client and cuts it at a layer; U-shaped SL cuts twice (head, body, tail).

A cut is the qualified name of a module, like torch pipelining's split spec: ``"features.2"``
means "cut right after the module ``features.2``". Two ways to cut:

* ``nn.Sequential`` (nested too, e.g. the reference models of :mod:`fedkit.models.registry`) is
  cut without tracing: its leaves are flattened and regrouped into new ``nn.Sequential`` parts.
  Every child, and every nested ``Sequential`` whose last leaf ends there, is a cut name.
* Any other module is traced with ``torch.fx.symbolic_trace``; each part is a ``GraphModule``
  over a contiguous run of graph nodes. A module name cuts after the last node traced inside it.
  Exactly one value may cross a cut (the smashed activation): a skip connection that jumps over
  it is refused, naming the edge ``producer -> consumer``.

The user's module is never modified: it is deep-copied first, so the parts own their weights.
A part's ``state_dict`` order is its ``Params`` order (:func:`fedkit.models.get_params`).

    >>> from fedkit.models import build_model
    >>> sm = split(build_model({"name": "cnn"}, (1, 8, 8), 10), "4")
    >>> [type(m).__name__ for m in sm.client], [type(m).__name__ for m in sm.server]
    (['Conv2d', 'ReLU', 'Conv2d', 'ReLU', 'MaxPool2d'], ['Flatten', 'Linear'])

:func:`fedkit.split.describe.cut_table` lists every valid cut with what each side pays.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import fx, nn

from fedkit.registry import did_you_mean

__all__ = ["SplitModel", "cut_names", "split"]


@dataclass(frozen=True, eq=False)  # modules: compare by identity
class SplitModel:
    """The parts of a cut model, in forward order: (client, server) or (head, body, tail)."""

    parts: tuple[nn.Module, ...]
    cuts: tuple[str, ...]

    @property
    def client(self) -> nn.Module:
        self._need(2, "client")
        return self.parts[0]

    @property
    def server(self) -> nn.Module:
        self._need(2, "server")
        return self.parts[1]

    @property
    def head(self) -> nn.Module:
        self._need(3, "head")
        return self.parts[0]

    @property
    def body(self) -> nn.Module:
        self._need(3, "body")
        return self.parts[1]

    @property
    def tail(self) -> nn.Module:
        self._need(3, "tail")
        return self.parts[2]

    def _need(self, n: int, what: str) -> None:
        if len(self.parts) != n:
            raise ValueError(f"{what} exists for a model cut {n - 1} time(s); this one has {len(self.cuts)}")

    def forward(self, *inputs: Any) -> Any:
        """Run the parts in turn: equal to the original model's forward."""
        out = self.parts[0](*inputs)
        for part in self.parts[1:]:
            out = part(out)
        return out

    __call__ = forward


# --------------------------------------------------------------------------------------------
# nn.Sequential: flatten the leaves, regroup them


def _leaves(seq: nn.Sequential, prefix: str = "") -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    for name, child in seq.named_children():
        q = f"{prefix}{name}"
        if isinstance(child, nn.Sequential) and len(child):
            out += _leaves(child, q + ".")
        else:
            out.append((q, child))
    return out


def _seq_positions(seq: nn.Sequential) -> tuple[list[tuple[str, nn.Module]], dict[str, int]]:
    """Leaves, and cut name -> number of leaves on the client side of that cut."""
    leaves = _leaves(seq)
    ends: dict[str, int] = {}
    for i, (q, _) in enumerate(leaves, start=1):
        parts = q.split(".")
        for k in range(len(parts), 0, -1):  # the leaf and every enclosing Sequential ending here
            ends[".".join(parts[:k])] = i
    # A name ends where its last leaf ends; keep cuts that leave a non-empty server side.
    return leaves, {n: i for n, i in ends.items() if i < len(leaves)}


def _seq_part(leaves: Sequence[tuple[str, nn.Module]]) -> nn.Sequential:
    return nn.Sequential(OrderedDict((q.replace(".", "_"), m) for q, m in leaves))


# --------------------------------------------------------------------------------------------
# torch.fx: contiguous runs of graph nodes


@dataclass(frozen=True)
class _Graph:
    gm: fx.GraphModule
    nodes: list[fx.Node]  # compute nodes (call_* ops), in execution order
    inputs: list[fx.Node]  # placeholders
    output: fx.Node
    ends: dict[str, int]  # module name -> number of compute nodes on the client side


def _trace(model: nn.Module) -> _Graph:
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # fx raises many types for untraceable control flow
        raise ValueError(
            f"cannot cut {type(model).__name__}: torch.fx cannot trace its forward ({e}); "
            "make it an nn.Sequential or remove data-dependent control flow"
        ) from None
    nodes = [n for n in gm.graph.nodes if n.op.startswith("call_")]
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    output = next(n for n in gm.graph.nodes if n.op == "output")
    ends: dict[str, int] = {}
    for i, n in enumerate(nodes, start=1):
        for q in n.meta.get("nn_module_stack", {}) or {}:
            ends[q] = i
    return _Graph(gm, nodes, inputs, output, {q: i for q, i in ends.items() if 0 < i < len(nodes)})


def _crossing(g: _Graph, pos: int) -> list[tuple[fx.Node, fx.Node]]:
    """Edges (producer, consumer) whose value is live across the cut after ``pos`` compute nodes."""
    after = set(g.nodes[pos:]) | {g.output}
    edges: list[tuple[fx.Node, fx.Node]] = []
    for p in [*g.inputs, *g.nodes[:pos]]:
        users = [u for u in p.users if u in after]
        if users:
            edges.append((p, users[0]))
    return edges


def _fx_part(g: _Graph, lo: int, hi: int, inp: fx.Node | None) -> fx.GraphModule:
    """A GraphModule running compute nodes [lo, hi); ``inp`` is the value crossing in (None: the
    model's own inputs); its output is the one value crossing out, or the model's output."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    if inp is None:
        for ph in g.inputs:
            env[ph] = graph.node_copy(ph)
    else:
        env[inp] = graph.placeholder(inp.name)

    def arg(n: fx.Node) -> fx.Node:
        if n not in env:
            if n.op != "get_attr":
                raise AssertionError(f"node {n.name} is not available in this part")
            env[n] = graph.node_copy(n)  # parameters used functionally travel with their user
        return env[n]

    for n in g.nodes[lo:hi]:
        env[n] = graph.node_copy(n, arg)
    if hi == len(g.nodes):
        graph.output(fx.map_arg(g.output.args[0], arg))
    else:
        (out,) = [p for p, _ in _crossing(g, hi)]
        graph.output(env[out])
    graph.lint()
    return fx.GraphModule(g.gm, graph, class_name=type(g.gm).__name__)


def _where(n: fx.Node) -> str:
    """A node's name, plus the module it was traced in when that is not obvious from the name."""
    stack = list(n.meta.get("nn_module_stack", {}) or {})
    inside = stack[-1] if stack else ""
    return f"{n.name} (in {inside})" if inside and n.target != inside else n.name


def _owned(part: nn.Module) -> set[int]:
    return {id(t) for t in [*part.parameters(), *part.buffers()]}


# --------------------------------------------------------------------------------------------
# public API


def _positions(model: nn.Module) -> tuple[Any, dict[str, int]]:
    if isinstance(model, nn.Sequential):
        return _seq_positions(model)
    g = _trace(model)
    return g, g.ends


def _resolve(name: str, ends: dict[str, int]) -> int:
    if name in ends:
        return ends[name]
    raise ValueError(f"unknown cut {name!r}{did_you_mean(name, ends)}; valid cuts: {', '.join(_ordered(ends))}")


def _ordered(ends: dict[str, int]) -> list[str]:
    return sorted(ends, key=lambda q: (ends[q], q.count("."), q))


_TRACING = threading.RLock()
"""torch.fx tracing patches module-level state (its ``CURRENT_PATCHER``): one trace at a time per
process, or two client threads of one device process cutting at once break each other."""


def cut_names(model: nn.Module) -> list[str]:
    """Every name :func:`split` accepts for ``model``, in forward order.

    For a traced model, names whose cut a skip connection crosses are left out.
    """
    with _TRACING:
        found, ends = _positions(model)
    if isinstance(found, _Graph):
        ends = {q: i for q, i in ends.items() if len(_crossing(found, i)) == 1}
    return _ordered(ends)


def split(model: nn.Module, cuts: str | Sequence[str]) -> SplitModel:
    """Cut ``model`` right after each named module: one cut -> (client, server), two -> U-shape.
    Thread-safe (tracing is serialised)."""
    with _TRACING:
        return _split(model, cuts)


def _split(model: nn.Module, cuts: str | Sequence[str]) -> SplitModel:
    names = (cuts,) if isinstance(cuts, str) else tuple(cuts)
    if len(names) not in (1, 2):
        raise ValueError(f"split takes one cut (client/server) or two (U-shape), got {len(names)}")
    model = copy.deepcopy(model)  # the parts own their weights; the user's module is untouched
    found, ends = _positions(model)
    pos = [_resolve(n, ends) for n in names]
    if len(pos) == 2 and not pos[0] < pos[1]:
        raise ValueError(f"cuts {names[0]!r} and {names[1]!r} must be in forward order and distinct")
    bounds = [0, *pos, None]
    if isinstance(found, _Graph):
        for name, p in zip(names, pos, strict=True):
            edges = _crossing(found, p)
            if len(edges) > 1:
                desc = ", ".join(f"{_where(a)} -> {_where(b)}" for a, b in edges)
                raise ValueError(
                    f"cut {name!r} is crossed by {len(edges)} values (a skip connection): {desc}; "
                    f"valid cuts: {', '.join(cut_names(model))}"
                )
        stops = [*pos, len(found.nodes)]
        ins: list[fx.Node | None] = [None, *(_crossing(found, p)[0][0] for p in pos)]
        parts: list[nn.Module] = [
            _fx_part(found, lo, hi, inp) for lo, hi, inp in zip([0, *pos], stops, ins, strict=True)
        ]
        shared = [a & b for i, a in enumerate(map(_owned, parts)) for b in map(_owned, parts[i + 1 :])]
        if any(shared):
            raise ValueError(f"cuts {list(names)} separate tied weights (one tensor used on both sides)")
    else:
        leaves = found
        parts = [_seq_part(leaves[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    return SplitModel(tuple(parts), names)
