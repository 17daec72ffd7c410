"""privacy.secagg in a scenario: sound compositions validate and build; unsound ones are refused
with the fix named."""

from __future__ import annotations

from typing import Any

import pytest

from fedkit.runtime.secagg import SecAggRound
from fedkit.scenario import validate
from fedkit.scenario.build import build_server
from tests.conftest import tiny_raw


def raw(secagg: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    over.setdefault("clients", {"count": 6, "per_round": {"fraction": 1.0}})
    return tiny_raw(privacy={"secagg": secagg or {}}, **over)


def test_a_sound_scenario_builds_a_secagg_round() -> None:
    s = validate(raw({"clip": 1.5, "bits": 64, "weighting": "uniform"},
                     compression={"downlink": "quant(bits=8)|zstd", "downlink_mode": "delta"},
                     strategy={"name": "fedadam"}))
    plan, params = build_server(s)
    assert isinstance(plan.policy, SecAggRound)
    f = plan.secagg.field
    assert (f.clip, f.bits, f.weighting, f.levels) == (1.5, 64, "uniform", (2**64 - 1) // 6)
    assert plan.secagg.dim == sum(p.size for p in params) + 3  # count, clipped, capped
    assert plan.policy.stage_deadline_s == s.server.deadline_s
    s = validate(raw({"deadline_s": 5, "complete": True}))
    plan, _ = build_server(s)
    assert plan.policy.stage_deadline_s == 5 and plan.secagg.complete


@pytest.mark.parametrize(("over", "match"), [
    ({"compression": {"uplink": "topk(ratio=0.1)"}}, r"sparsifies \(topk\).*unsound with masks.*uplink: identity"),
    ({"compression": {"uplink": "randk(ratio=0.2)|quant(bits=8)"}}, r"sparsifies \(randk\)"),
    ({"compression": {"uplink": "ef:sign"}}, r"error feedback.*uplink: identity"),
    ({"compression": {"uplink": "quant(bits=8)"}}, r"quantisation into the field, then masking"),
    ({"compression": {"uplink": "zstd"}}, r"uplink: identity"),
    ({"strategy": {"name": "fedmedian"}}, r"'fedmedian' needs each client's update.*fedavg"),
    ({"strategy": {"name": "krum"}}, r"'krum' needs each client's update"),
    ({"server": {"on_too_few": "retry"}}, r"on_too_few: skip"),
    ({"clients": {"count": 6, "per_round": {"count": 1}}}, r"at least 2 clients per round"),
    ({"secagg": {"degree": 6}}, r"degree 6 exceeds n - 1 = 5"),
    ({"secagg": {"degree": 3, "threshold": 4}}, r"threshold 4 exceeds degree 3"),
    ({"secagg": {"threshold": 6}}, r"threshold 6 exceeds the 5 neighbours"),
    ({"secagg": {"min_survivors": 7}}, r"min_survivors 7 exceeds the 6 clients"),
    ({"secagg": {"degree": 3, "complete": True}}, r"either degree or complete"),
    ({"secagg": {"max_weight": 10**9}}, r"max_weight 1000000000 exceeds the 715827882 levels.*bits: 64"),
    ({"secagg": {"clip": 0}}, r"clip"),
    ({"secagg": {"bits": 16}}, r"bits"),
    ({"secagg": {"neighbours": 4}}, r"neighbours"),
])
def test_unsound_compositions_are_refused_naming_the_fix(over: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate(raw(over.pop("secagg", None), **over))


def test_split_learning_with_secagg_is_refused() -> None:
    r = raw(model={"name": "mlp", "hidden": [16]}, split={"scheme": "splitfed_v1", "cut": "1"})
    with pytest.raises(ValueError, match="does not apply to split learning"):
        validate(r)
