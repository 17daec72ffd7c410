"""Layer-wise adaptive compression inside the codec: ``adaptive(...)`` re-plans per-layer
settings on the client's own update (L-GreCo, Markov et al., MLSys 2024; see ``select.py``).

When to use it: models whose layers compress very differently (a wide first layer with a
slowly decaying spectrum next to small, nearly low-rank ones). Under the error budget of a
uniform setting it spends bytes where they buy the most accuracy. Every ``every`` encodes the
client measures each candidate's error and size on the update and solves the knapsack; the
payload then carries the concrete per-layer spec (e.g. ``powersgd(rank=[8,1,2])``), so the
server decodes it from the bytes alone, as with any codec.

    ef:adaptive(family=powersgd,candidates=[1,2,4,8],uniform=2)
    adaptive(family=topk,candidates=[0.002,0.01,0.05],uniform=0.01,then='quant(bits=8)|zstd')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedkit.compression import base
from fedkit.compression.limits import Like
from fedkit.compression.select import FAMILIES, plan
from fedkit.compression.spec import decode as decode_any
from fedkit.compression.spec import make
from fedkit.types import DecodeError, Encoded, Params


@base.register("adaptive")
@dataclass(frozen=True)
class Adaptive:
    alone_hint: ClassVar[str] = "; put later stages in then='...'"

    family: str = "powersgd"
    candidates: tuple[Any, ...] = (1, 2, 4, 8)
    uniform: Any = 2
    then: str = ""
    every: int = 1
    budget_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"adaptive: family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        cands = tuple(self.candidates) if isinstance(self.candidates, list | tuple) else (self.candidates,)
        object.__setattr__(self, "candidates", cands)
        if not cands:
            raise ValueError("adaptive: candidates must not be empty")
        if self.uniform not in cands:
            raise ValueError(f"adaptive: uniform={self.uniform!r} must be one of the candidates {list(cands)}")
        if int(self.every) < 1:
            raise ValueError("adaptive: every must be >= 1")
        if not self.budget_scale > 0:
            raise ValueError("adaptive: budget_scale must be > 0")
        for c in cands:  # each candidate must build: catches bad ratios/bits/ranks early
            make(self._concrete(c))

    def _concrete(self, setting: Any) -> str:
        stage = f"{self.family}({FAMILIES[self.family]}={base.format_value(setting)})"
        return stage + (f"|{self.then}" if self.then else "")

    @property
    def spec(self) -> str:
        parts = [
            f"family={self.family}",
            f"candidates={base.format_value(list(self.candidates))}",
            f"uniform={base.format_value(self.uniform)}",
        ]
        if self.then:
            parts.append(f"then={base.format_value(self.then)}")
        if self.every != 1:
            parts.append(f"every={int(self.every)}")
        if self.budget_scale != 1.0:
            parts.append(f"budget_scale={base.format_value(float(self.budget_scale))}")
        return f"adaptive({','.join(parts)})"

    def init(self, like: Params) -> Any:
        return (None, None, 0)  # (concrete spec, its state, encodes so far)

    def encode(
        self, state: Any, x: Params, rng: np.random.Generator | None = None
    ) -> tuple[Any, Encoded]:
        concrete, inner_state, count = state if state is not None else self.init(x)
        if concrete is None or count % int(self.every) == 0:
            chosen = plan(
                x, self.family, self.candidates, self.uniform, then=self.then,
                budget_scale=self.budget_scale,
            )
            if chosen != concrete:  # new per-layer settings: their state (e.g. warm starts) restarts
                concrete, inner_state = chosen, make(chosen).init(x)
        inner_state, enc = make(concrete).encode(inner_state, x, rng)
        return (concrete, inner_state, count + 1), enc

    def decode(self, enc: Encoded, like: Like = None) -> Params:
        if enc.codec.startswith("adaptive("):
            raise DecodeError("an adaptive payload must name its concrete per-layer codec")
        return decode_any(enc, like)
