"""The cut table: every place a model can be cut, with what each side pays (``fedkit describe``).

A user picks a cut by trading three things: how much of the model (parameters, forward compute)
the device carries, and how many bytes per sample cross the wire. :func:`cut_table` measures them
for every cut :func:`~fedkit.split.partition.cut_names` accepts, in forward order:

* client-side and server-side parameter counts (they add up to the whole model's count);
* the activation shape per sample and its float32 bytes (what one sample costs up, and its
  gradient down, before any codec or bottleneck);
* the client's share of forward compute: FLOPs from ``torch.utils.flop_counter.FlopCounterMode``
  (matmuls and convolutions; elementwise ops count zero, so a cut after a ReLU costs what the cut
  before it does). A model with no countable FLOPs, or whose forward the counter cannot run, is
  measured by forward time instead: each segment between consecutive cuts is timed on its real
  input (median of repeats) and the share is the running sum, so it never decreases along the
  cut order. ``basis`` says which;
* the parameters of local_loss's default auxiliary head (a linear layer to ``num_classes``).

    >>> from fedkit.models import build_model
    >>> rows = cut_table(build_model({"name": "cnn"}, (1, 8, 8), 10), (1, 8, 8), 10)
    >>> [(r.name, r.activation_shape) for r in rows][-2:]
    [('4', (32, 4, 4)), ('5', (512,))]
"""

from __future__ import annotations

import copy
import functools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from fedkit.split.partition import cut_names, split

__all__ = ["CutRow", "cut_table", "format_cut_table", "ushape_flops"]

Basis = Literal["flops", "time"]


@dataclass(frozen=True)
class CutRow:
    """One valid cut of a model and what it costs each side."""

    name: str
    client_params: int
    server_params: int
    activation_shape: tuple[int, ...]  # per sample
    activation_bytes_per_sample: int  # float32, before any codec
    client_share: float  # of forward FLOPs or forward time (see basis), in [0, 1]
    basis: Basis
    aux_params: int  # local_loss's default auxiliary head at this cut

    @property
    def total_params(self) -> int:
        return self.client_params + self.server_params


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _flops(fn: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _seconds(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm-up: first calls pay allocation and dispatch caches
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _segments(model: nn.Module, names: Sequence[str]) -> list[tuple[str, ...]]:
    """Group cut names that cut at the same place (a Sequential and its last child), in order."""
    groups: list[list[str]] = []
    for name in names:
        if groups:
            try:
                split(model, [groups[-1][0], name])
            except ValueError:  # same position: the two cuts are not distinct
                groups[-1].append(name)
                continue
        groups.append([name])
    return [tuple(g) for g in groups]


def _time_shares(model: nn.Module, x: torch.Tensor, groups: Sequence[tuple[str, ...]], repeat: int) -> list[float]:
    """Client share of forward time per group: running sum of segment times over the total."""
    heads = [g[0] for g in groups]
    segs: list[nn.Module] = [split(model, heads[0]).client]
    segs += [split(model, [a, b]).body for a, b in zip(heads, heads[1:], strict=False)]
    segs.append(split(model, heads[-1]).server)
    spent, inp = [], x
    for seg in segs:
        spent.append(_seconds(functools.partial(seg, inp), repeat))
        inp = seg(inp)
    total = sum(spent)
    acc, out = 0.0, []
    for t in spent[:-1]:
        acc += t
        out.append(min(1.0, acc / total) if total > 0 else 0.0)
    return out


def cut_table(
    module: nn.Module, input_shape: Sequence[int], num_classes: int, *, repeat: int = 20
) -> list[CutRow]:
    """Every valid cut of ``module`` for per-sample inputs of ``input_shape``, in forward order.

    ``module`` is not modified (a deep copy runs in eval mode, without gradients). ``repeat`` is
    the number of timed forwards per segment when the share falls back to time.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    probe = copy.deepcopy(module).eval()
    x = torch.zeros((2, *input_shape))  # batch of 2: BatchNorm-safe; shapes are per sample
    with torch.no_grad():
        try:
            out = probe(x)
        except Exception as e:  # the user's forward: say which input it was given
            raise ValueError(f"{type(module).__name__} cannot run on inputs of shape {tuple(input_shape)}: {e}") from None
        if not isinstance(out, torch.Tensor) or out.shape != (2, num_classes):
            got = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"{type(module).__name__} should output {num_classes} logits per sample, got {got}")
        names = cut_names(probe)
        if not names:
            return []
        try:
            total = _flops(lambda: probe(x))
        except Exception:  # an op the counter cannot run: time it instead
            total = 0.0
        basis: Basis = "flops" if total > 0 else "time"
        parts = {n: split(probe, n) for n in names}
        if basis == "flops":
            shares = {n: min(1.0, _flops(functools.partial(parts[n].client, x)) / total) for n in names}
        else:
            groups = _segments(probe, names)
            shares = {n: s for g, s in zip(groups, _time_shares(probe, x, groups, repeat), strict=True) for n in g}
        rows = []
        for n in names:
            act = parts[n].client(x)
            if not isinstance(act, torch.Tensor):
                continue  # a cut is one tensor on the wire
            shape = tuple(int(s) for s in act.shape[1:])
            floats = math.prod(shape)
            rows.append(
                CutRow(
                    name=n,
                    client_params=_count(parts[n].client),
                    server_params=_count(parts[n].server),
                    activation_shape=shape,
                    activation_bytes_per_sample=4 * floats,
                    client_share=shares[n],
                    basis=basis,
                    aux_params=floats * num_classes + num_classes,
                )
            )
    return rows


def ushape_flops(module: nn.Module, cuts: Sequence[str], input_shape: Sequence[int]) -> dict[str, float]:
    """Forward FLOPs per sample of a U-shape's head, body and tail and of the whole model
    (``FlopCounterMode``: matmuls and convolutions): the client's share is (head + tail) / whole.

    >>> from fedkit.models import build_model
    >>> f = ushape_flops(build_model({"name": "cnn"}, (1, 8, 8), 10), ["1", "4"], (1, 8, 8))
    >>> f["head"] + f["body"] + f["tail"] == f["whole"]
    True
    """
    probe = copy.deepcopy(module).eval()
    sm = split(probe, cuts)
    x = torch.zeros((1, *input_shape))
    with torch.no_grad():
        h = sm.head(x)
        b = sm.body(h)
        return {"head": _flops(lambda: sm.head(x)), "body": _flops(lambda: sm.body(h)),
                "tail": _flops(lambda: sm.tail(b)), "whole": _flops(lambda: probe(x))}


def _human(n: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    raise AssertionError("unreachable")


def format_cut_table(rows: Sequence[CutRow]) -> str:
    """A plain aligned text table of :func:`cut_table` rows (one line per cut)."""
    if not rows:
        return "no valid cut points (the model has fewer than two cuttable modules)"
    basis = rows[0].basis
    head = ["cut", "client params", "server params", "activation/sample", "bytes/sample",
            f"client {'FLOPs' if basis == 'flops' else 'time'}", "local_loss aux"]
    body = [
        [r.name, f"{r.client_params:,}", f"{r.server_params:,}", "x".join(map(str, r.activation_shape)),
         _human(r.activation_bytes_per_sample) + "B", f"{100 * r.client_share:.1f}%", f"{r.aux_params:,}"]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    fmt = [str.ljust, *([str.rjust] * (len(head) - 1))]
    lines = ["  ".join(f(c, w) for f, c, w in zip(fmt, line, widths, strict=True)) for line in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    note = ("share of forward FLOPs (matmul/conv; elementwise ops count zero)" if basis == "flops"
            else "share of measured forward time (the model has no countable FLOPs)")
    return "\n".join([*lines, f"client {'FLOPs' if basis == 'flops' else 'time'}: {note}; bytes are float32, before any codec"])
