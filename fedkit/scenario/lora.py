"""How a ``peft: {method: lora, aggregation: ...}`` scenario plugs its variant into the round
engine (fedkit/aggregation/lora.py holds the maths).

One :class:`LoraEngine` per server: the :class:`~fedkit.aggregation.lora.LoraAggregator`, and
where the variant needs more than one model for all, the per-client seams of the plan:

- the downlink (``Plan.per_client``): each client's adapter at its rank (FlexLoRA's truncated
  SVD, FLoRA's fresh factors) followed by the base change it folds into its frozen weights
  (FedEx-LoRA's accumulated residual, dense; FLoRA's stacks so far, as factors), see
  :func:`fedkit.peft.model.fold_base`. The base change is part of every downlink, counted in
  ``bytes_down`` like the adapter: it is what FedEx and FLoRA cost.
- the model (``Plan.models``): a client whose ``devices:`` profile gives another ``lora_rank``
  builds the adapter at that rank;
- acceptance (``Acceptance.layouts`` / ``check``): an update must have the shapes of the
  client's rank and leave frozen factors alone, or it is refused like any bad update.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedkit.aggregation.base import ServerOpt
from fedkit.aggregation.lora import LoraAggregator, LoraDP, make_lora_aggregator, ranks_from_devices
from fedkit.runtime.downlink import PerClient
from fedkit.runtime.task import ModelRef
from fedkit.scenario.schema import Scenario
from fedkit.types import ClientId, Params


@dataclass(frozen=True)
class LoraEngine:
    aggregator: LoraAggregator
    per_client: PerClient | None = None
    models: Mapping[ClientId, ModelRef] = field(default_factory=dict)

    def acceptance(self, init_params: Params) -> dict[str, Any]:
        """``Acceptance`` fields: each client's layout at its rank, and the variant's own check."""
        import numpy as np

        dtypes = [np.asarray(a).dtype for a in init_params]
        layouts = {c: tuple((tuple(s), d) for s, d in zip(self.aggregator.shapes_for(c), dtypes, strict=True))
                   for c in self.aggregator.ranks}
        return {"layouts": layouts or None, "check": self.aggregator.check_delta}


def client_ranks(s: Scenario, clients: list[ClientId]) -> dict[ClientId, int]:
    """client -> LoRA rank from the ``devices:`` profiles' ``lora_rank`` (none given: {})."""
    if s.devices is None or not any(p.lora_rank for p in s.devices.profiles.values()):
        return {}
    from fedkit.scenario.devices import build_devices

    devices = build_devices(s.devices, clients, s.seed)
    ranks = {name: p.lora_rank for name, p in s.devices.profiles.items() if p.lora_rank is not None}
    return ranks_from_devices({c: d.profile for c, d in devices.items()}, ranks)


def lora_engine(s: Scenario, names: list[str], init_params: Params, model: ModelRef, server_opt: ServerOpt,
                clients: list[ClientId], dp: Any = None) -> LoraEngine:
    """``dp``: central DP-FedAvg's step (fedkit.secure.dp_aggregator.DpFedAvg) whose clip norm,
    noise and denominator DP-LoRA applies to the tensors clients send (A stays exactly shared
    under ffa and fedsvd: the server step after the noised mean is post-processing)."""
    assert s.peft is not None and s.peft.lora is not None
    ranks = client_ranks(s, clients)
    if dp is not None:
        dp = LoraDP(dp.clip_norm, dp.noise_multiplier, dp.expected_clients, dp.poisson)
    agg = make_lora_aggregator(s.peft.aggregation, names, [a.shape for a in init_params], alpha=s.peft.lora.alpha,
                               server_opt=server_opt, seed=s.seed, ranks=ranks, dp=dp)
    if not (agg.variant.base or agg.variant.ranks):
        return LoraEngine(agg)
    models = {}
    for c, r in ranks.items():
        if r != s.peft.lora.r:
            spec = dict(model.spec)
            spec["peft"] = dict(spec["peft"]) | {"lora": dict(spec["peft"]["lora"]) | {"r": r}}
            models[c] = model.model_copy(update={"spec": spec})
    return LoraEngine(agg, agg.downlink, models)
