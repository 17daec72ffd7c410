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
