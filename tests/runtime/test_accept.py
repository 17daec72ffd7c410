"""Sanity bounds of the acceptance rule: finite but absurd replies are refused with a reason."""

from __future__ import annotations

import numpy as np
import pytest

from fedkit.compression import make
from fedkit.runtime.accept import Acceptance, Rejected, accept
from fedkit.types import Reply, Task

MODEL = [np.ones((4, 3), np.float32), np.zeros(3, np.float32)]  # norm sqrt(12)


def _reply(delta: list[np.ndarray], n: int = 10, client: str = "c0") -> tuple[Task, Reply]:
    _, enc = make("identity").encode(None, MODEL)
    task = Task(1, client, "train", enc, {}, task_id="t1", version=0)
    _, up = make("identity").encode(None, delta)
    return task, Reply("t1", client, 1, n, up)


def test_an_update_of_absurd_norm_is_refused() -> None:
    rule = Acceptance.for_params(MODEL, max_norm_ratio=100.0)
    ok = [np.full((4, 3), 0.5, np.float32), np.zeros(3, np.float32)]
    assert accept(rule, *_reply(ok)).num_examples == 10
    huge = [np.full((4, 3), 3e38, np.float32), np.zeros(3, np.float32)]  # finite, overflows a float32 norm
    with pytest.raises(Rejected, match=r"update norm 1\.04e\+39 exceeds 100 x the model's norm"):
        accept(rule, *_reply(huge))


def test_num_examples_ceiling_and_registered_counts() -> None:
    delta = [np.zeros((4, 3), np.float32), np.zeros(3, np.float32)]
    rule = Acceptance.for_params(MODEL, max_num_examples=10**9)
    with pytest.raises(Rejected, match="exceeds the server's ceiling"):
        accept(rule, *_reply(delta, n=2**64 - 1))
    rule = Acceptance.for_params(MODEL, examples={"c0": 50})
    assert accept(rule, *_reply(delta, n=50)).num_examples == 50
    with pytest.raises(Rejected, match="exceeds the 50 registered for 'c0'"):
        accept(rule, *_reply(delta, n=51))
    with pytest.raises(Rejected, match="'c9' has no registered example count"):
        accept(rule, *_reply(delta, client="c9"))


def _encoded(spec: str, delta: list[np.ndarray]) -> tuple[Task, Reply]:
    task, reply = _reply(delta)
    codec = make(spec)
    _, up = codec.encode(codec.init(delta), delta, np.random.default_rng(0))
    return task, Reply("t1", "c0", 1, 10, up)


def test_an_update_in_another_codec_family_is_refused_unless_allowed() -> None:
    from fedkit.scenario import validate
    from fedkit.scenario.build import uplink_families
    from tests.conftest import tiny_raw

    delta = [np.full((4, 3), 0.5, np.float32), np.zeros(3, np.float32)]
    scenario = validate(tiny_raw(compression={"uplink": "ef:topk(ratio=0.5)|quant(bits=8)"}))
    rule = Acceptance.for_params(MODEL, codecs=uplink_families(scenario.compression))
    assert accept(rule, *_encoded("topk(ratio=0.25)|quant(bits=4)", delta))  # same family, other settings
    with pytest.raises(Rejected, match=r"encoded with 'identity', not the scenario's uplink family \(topk\|quant\)"):
        accept(rule, *_reply(delta))  # raw floats where the scenario compresses
    with pytest.raises(Rejected, match=r"encoded with 'x+'\.\.\. \(70000 chars\), not the scenario's"):
        accept(rule, *_reply_named("x" * 70000, delta))  # an attacker's name is echoed cut short
    with pytest.raises(Rejected, match="unparsable codec"):
        accept(rule, *_reply_named("topk(", delta))
    allowed = validate(tiny_raw(compression={"uplink": "topk(ratio=0.5)", "uplink_accept": ["identity"]}))
    rule = Acceptance.for_params(MODEL, codecs=uplink_families(allowed.compression))
    assert accept(rule, *_reply(delta))
    anything = validate(tiny_raw(compression={"uplink": "topk(ratio=0.5)", "uplink_accept": "any"}))
    assert uplink_families(anything.compression) is None
    with pytest.raises(ValueError, match=r"uplink_accept\[0\]"):
        validate(tiny_raw(compression={"uplink_accept": ["nosuch"]}))


def _reply_named(codec: str, delta: list[np.ndarray]) -> tuple[Task, Reply]:
    task, reply = _reply(delta)
    assert reply.update is not None
    return task, Reply("t1", "c0", 1, 10, type(reply.update)(codec, reply.update.data))
