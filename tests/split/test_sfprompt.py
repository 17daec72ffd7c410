"""SFPrompt (fedkit/split/sfprompt.py) on a tiny pre-trained ViT: EL2N keeps the hardest
ceil(gamma n) samples, the local-loss step sends nothing and moves only prompts + tail, the fed
server aggregates exactly prompts + tail, labels never leave the client, the body never changes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fedkit.cli import main
from fedkit.experiment import run_scenario
from fedkit.peft.model import build as build_peft
from fedkit.pretrain import pretrain
from fedkit.report.run_dir import RunDir
from fedkit.rng import rng
from fedkit.scenario import ScenarioError, validate
from fedkit.scenario.build import build
from fedkit.split.channel import LocalChannel, SplitBatch
from fedkit.split.client import ClientConfig, train_split
from fedkit.split.schemes import make_setup
from fedkit.split.server import LocalServer
from fedkit.split.sfprompt import SFPrompt, el2n, keep_hardest

VIT = {"name": "vit_tiny", "dim": 16, "depth": 3, "heads": 2}
TAIL = ["blocks.2", "norm", "head"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ViT pre-trained by fedkit.pretrain on digits 0-4 (one epoch)."""
    raw = {"name": "pre", "seed": 0, "rounds": 1, "clients": {"count": 1},
           "data": {"dataset": {"name": "digits", "classes": [0, 1, 2, 3, 4]}},
           "model": VIT, "train": {"epochs": 1, "batch_size": 32, "optimizer": "adam", "lr": 0.003},
           "output": {"plot": False}}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return pretrain(validate(raw), tmp_path_factory.mktemp("pre") / "model")[0]
    finally:
        torch.set_num_threads(before)


def raw(ckpt: Path, **over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "name": "sfprompt", "seed": 1, "rounds": 2, "clients": {"count": 3},
        "data": {"dataset": {"name": "digits", "classes": [5, 6, 7, 8, 9]}, "partition": {"name": "iid"}},
        "model": {**VIT, "checkpoint": str(ckpt), "prompt_tokens": 2},
        "peft": {"method": "prompt", "train_also": TAIL},
        "train": {"epochs": 1, "batch_size": 16, "optimizer": "adam", "lr": 0.01},
        "split": {"scheme": "sfprompt", "cuts": ["blocks.0", "blocks.1"], "sfprompt": {"gamma": 0.5, "local_epochs": 1}},
        "output": {"plot": False},
    }
    return s | over


def test_el2n_and_keep_hardest_by_hand() -> None:
    # softmax([0, 0]) = [.5, .5]: for label 0 the error is [-.5, .5], norm sqrt(.5)
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0], [-10.0, 10.0], [math.log(3), 0.0]])
    s = el2n(logits, torch.tensor([0, 0, 0, 1]))
    np.testing.assert_allclose(s, [math.sqrt(0.5), 0.0, math.sqrt(2), math.sqrt(2) * 0.75], atol=1e-8)
    assert keep_hardest(s, 0.5).tolist() == [2, 3]  # the two worst-predicted samples
    assert keep_hardest(np.array([0.1, 0.9, 0.5, 0.9, 0.2]), 0.5).tolist() == [1, 2, 3]  # ceil(2.5) = 3
    assert keep_hardest(np.array([0.2, 0.2, 0.2]), 0.5).tolist() == [0, 1]  # ties: earlier samples
    for n in (1, 7, 10, 33):
        for gamma in (0.01, 0.3, 0.5, 0.7, 1.0):
            kept = keep_hardest(rng(0, "scores", n).random(n), gamma)
            assert len(kept) == math.ceil(round(gamma * n, 9)), (n, gamma)
    assert len(keep_hardest(np.ones(10), 0.3)) == 3  # 0.3 * 10 is 3.0000000000000004 in floats
    with pytest.raises(ValueError, match="gamma"):
        keep_hardest(np.ones(3), 0.0)
    with pytest.raises(ValueError, match="gamma"):
        SFPrompt(gamma=1.5)


def test_client_holds_only_prompts_and_tail(ckpt: Path) -> None:
    s = validate(raw(ckpt))
    exp = build(s)
    assert exp.plan.split is not None
    setup = exp.plan.split.setup
    head, tail = (list(m.state_dict()) for m in setup.client_modules)
    assert head == ["prompt"]
    assert tail == [n for n in tail if n.startswith(("blocks.2.", "norm.", "head."))] and "head.weight" in tail
    peft = build_peft((64,), 10, {**VIT, "checkpoint": str(ckpt), "prompt_tokens": 2},
                      {"method": "prompt", "train_also": TAIL}, 1)
    assert sorted(head + tail) == sorted(peft.state_dict())  # what the fed server aggregates: prompts + tail
    sizes = {n: tuple(t.shape) for n, t in peft.state_dict().items()}
    assert [a.shape for a in exp.init_params] == [sizes[n] for n in head + tail]
    body = list(setup.server_module.state_dict())
    assert body and all(n.startswith("blocks.1.") for n in body)
    assert not any(p.requires_grad for p in setup.server_module.parameters())


def _task(ckpt: Path, sfp: SFPrompt, n: int = 40) -> tuple[list[np.ndarray], dict[str, float], list[SplitBatch], LocalServer, Any]:
    exp = build(validate(raw(ckpt)))
    assert exp.plan.split is not None
    setup, client = exp.plan.split.setup, exp.clients["client-0"]
    tr = exp.plan.train(1)
    box = LocalServer(exp.plan.split.endpoint.cfg, exp.plan.split.initial)
    seen: list[SplitBatch] = []

    def spy(c: str, msg: SplitBatch) -> SplitBatch | None:
        seen.append(msg)
        reply = box.handle(c, msg)
        if reply is not None:
            seen.append(reply)
        return reply

    ch = LocalChannel(spy, "c0")
    ccfg = ClientConfig("sfprompt", setup.client_modules, tr, 1, sfprompt=sfp)
    x, y = client.train.x[:n], client.train.y[:n]
    new, m = train_split(ccfg, exp.init_params, x, y, ch, rng(1, "train", 1, "c0"), round=1, client="c0")
    return new, m, seen, box, (exp, ch)


def test_one_task_labels_stay_home_body_never_changes_local_step_is_silent(ckpt: Path) -> None:
    n, bs = 40, 16
    new, m, seen, box, (exp, ch) = _task(ckpt, SFPrompt(0.5, 1), n)
    kept = math.ceil(0.5 * n)
    assert m["kept"] == kept and m["samples"] == kept and m["score_steps"] == math.ceil(n / bs)
    assert m["steps"] == math.ceil(kept / bs) and m["local_steps"] == math.ceil(n / bs)
    # scoring: one forward over the wire per batch; training: two round trips per step
    assert len(seen) == 2 * m["score_steps"] + 4 * m["steps"]
    assert all(s.labels is None for s in seen) and ch.bytes.labels_up == 0
    bad = SplitBatch(99, "activations", [np.zeros((2, *exp.plan.split.setup.activation_shape), np.float32)],
                     np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="keeps labels on the client"):  # the server refuses them outright
        box.handle("c0", bad)
    init = exp.plan.split.initial.shared.params
    assert all(np.array_equal(a, b) for a, b in zip(box.state.shared.params, init, strict=True))
    assert all(not np.array_equal(a, b) for a, b in zip(new, exp.init_params, strict=True))  # prompts + tail moved
    # the local-loss step adds no message and no byte, yet moves prompts + tail
    new0, m0, seen0, _, (_, ch0) = _task(ckpt, SFPrompt(0.5, 0), n)
    assert m0["local_steps"] == 0 and len(seen0) == len(seen) and ch0.bytes == ch.bytes
    assert all(not np.array_equal(a, b) for a, b in zip(new, new0, strict=True))
    _, m1, seen1, _, _ = _task(ckpt, SFPrompt(1.0, 0), n)  # keeps all: no scoring
    assert m1["kept"] == n and m1["score_steps"] == 0 and len(seen1) == 4 * m1["steps"]
    _, ml, seenl, _, _ = _task(ckpt, SFPrompt(0.5, 1, "local"), n)  # scored by head -> tail: no frames
    assert ml["kept"] == kept and ml["score_steps"] == 0 and len(seenl) == 4 * ml["steps"]


def test_run_aggregates_prompts_and_tail_and_describe_shows_flops(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = validate(raw(ckpt))
    exp = build(s)
    summary = run_scenario(s, tmp_path / "run")
    run = RunDir(tmp_path / "run", resume=True)
    final = run.read_checkpoint()
    assert final is not None and final.round == 2
    assert [a.shape for a in final.params] == [a.shape for a in exp.init_params]
    body0 = exp.plan.split.initial.shared.params
    body = [final.sections["split"][f"params/{i}"] for i in range(len(body0))]
    assert all(np.array_equal(a, b) for a, b in zip(body, body0, strict=True))  # the body never changed
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["bytes_labels_up"] == 0 and r["bytes_activations_down"] > 0 for r in rows)
    assert summary["total_bytes_up"] > 0
    cfg = tmp_path / "s.yaml"
    cfg.write_text(json.dumps(raw(ckpt)))
    assert main(["describe", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert "client's share of forward FLOPs (head + tail vs whole model)" in text


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"sfprompt": {"gamma": 0.0}}, "gamma"),
        ({"sfprompt": {"gamma": 1.5}}, "gamma"),
        ({"sfprompt": {"local_epochs": -1}}, "local_epochs"),
        ({"sfprompt": {"score": "body"}}, "score"),
        ({"cuts": ["embed", "blocks.1"]}, "prompt tokens fall in the body"),
        ({"cuts": ["blocks.0"]}, "takes 2 cut"),
        ({"bottleneck": {"dim": 4}}, "bottleneck"),
    ],
)
def test_bad_split_section(ckpt: Path, over: dict[str, Any], match: str) -> None:
    r = raw(ckpt)
    with pytest.raises(ScenarioError, match=match):
        validate(r | {"split": r["split"] | over})


def test_bad_combinations(ckpt: Path) -> None:
    r = raw(ckpt)
    with pytest.raises(ScenarioError, match="stays frozen on the server"):
        validate(r | {"peft": {"method": "prompt", "train_also": ["blocks.1", "head"]}})
    with pytest.raises(ScenarioError, match="needs peft"):
        validate({k: v for k, v in r.items() if k != "peft"})
    with pytest.raises(ScenarioError, match="is for scheme sfprompt"):
        validate(r | {"split": r["split"] | {"scheme": "ushape"}})
    with pytest.raises(ScenarioError, match="runs scheme sfprompt"):
        validate(r | {"split": {"scheme": "ushape", "cuts": ["blocks.0", "blocks.1"]}})


def test_cuts_whose_head_output_the_tail_cannot_take() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
    model[2].requires_grad_(False)  # the body, frozen
    with pytest.raises(ValueError, match=r"skips the body.*cut '1' gives \(32,\).*\(16,\) at cut '3'"):
        make_setup("sfprompt", model, ["1", "3"], (64,), 10)
    with pytest.raises(ValueError, match="1.weight, 1.bias would train"):
        make_setup("sfprompt", nn.Sequential(*[nn.Linear(8, 8) for _ in range(3)]), ["0", "1"], (8,), 8)
    square = nn.Sequential(*[nn.Linear(8, 8) for _ in range(3)])
    square[1].requires_grad_(False)
    setup = make_setup("sfprompt", square, ["0", "1"], (8,), 8)
    assert [list(m.state_dict()) for m in setup.client_modules] == [["0.weight", "0.bias"], ["2.weight", "2.bias"]]


def test_gamma_one_without_local_step_is_federated_prompt_tuning(ckpt: Path, tmp_path: Path) -> None:
    """Keeping every sample and skipping the local-loss step leaves split training of prompts +
    tail through a frozen body: the same maths as FL prompt tuning of the unsplit model (same
    batches, SGD on the same tensors), so the final tensors agree to float tolerance (SGD: Adam
    would amplify float noise in near-zero gradients)."""
    r = raw(ckpt, train={"epochs": 1, "batch_size": 16, "lr": 0.05})
    split_s = validate(r | {"split": r["split"] | {"sfprompt": {"gamma": 1.0, "local_epochs": 0}}})
    fl_s = validate({k: v for k, v in r.items() if k != "split"})
    run_scenario(split_s, tmp_path / "split")
    run_scenario(fl_s, tmp_path / "fl")
    exp = build(split_s)
    assert exp.plan.split is not None
    names = [n for m in exp.plan.split.setup.client_modules for n in m.state_dict()]
    fl_names = list(build_peft((64,), 10, {**VIT, "checkpoint": str(ckpt), "prompt_tokens": 2},
                               {"method": "prompt", "train_also": TAIL}, 1).state_dict())
    a = RunDir(tmp_path / "split", resume=True).read_checkpoint()
    b = RunDir(tmp_path / "fl", resume=True).read_checkpoint()
    assert a is not None and b is not None
    by_name = dict(zip(fl_names, b.params, strict=True))
    for n, v in zip(names, a.params, strict=True):
        np.testing.assert_allclose(v, by_name[n], atol=1e-5, err_msg=n)
