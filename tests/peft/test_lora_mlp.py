"""LoRA on fedkit's own MLP: only adapters (and train_also heads) form the Params, so only
they cross the wire, and every client shares one frozen base."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedkit.compression.frame import packed_nbytes
from fedkit.experiment import run_scenario
from fedkit.models import get_params
from fedkit.report.run_dir import RunDir, read_metrics
from fedkit.scenario import ScenarioError, validate
from fedkit.scenario.build import build

pytest.importorskip("peft")


def raw(**over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "name": "lora-mlp", "seed": 3, "rounds": 2,
        "clients": {"count": 3},
        "data": {"dataset": {"name": "digits"}, "partition": {"name": "iid"}},
        "model": {"name": "mlp", "hidden": [32]},
        "train": {"steps": 3, "batch_size": 16, "lr": 0.1},
        "peft": {"method": "lora", "lora": {"r": 4, "alpha": 8, "targets": ["1"]}, "train_also": ["3"]},
        "output": {"plot": False},
    }
    return s | over


def test_params_are_the_adapters_and_head_only() -> None:
    exp = build(validate(raw()))
    names = list(exp.plan.model.spec["peft"]["lora"]["targets"])
    assert names == ["1"]
    shapes = [a.shape for a in exp.init_params]
    # lora_A (r x 64), lora_B (32 x r), head weight (10 x 32), head bias (10)
    assert shapes == [(4, 64), (32, 4), (10, 32), (10,)]
    assert not np.any(exp.init_params[1])  # B starts at zero: the adapted model is the base


def test_uplink_and_downlink_bytes_are_the_trainable_tensors(tmp_path: Any) -> None:
    s = validate(raw())
    exp = build(s)
    trainable = sum(a.nbytes for a in exp.init_params)
    frame = 4 + 2 + len("identity") + packed_nbytes(exp.init_params) - trainable  # magic, name, array heads
    run_scenario(s, tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    for row in rows:
        assert row["bytes_up"] == 3 * (trainable + frame)
        assert row["bytes_down"] == 3 * (trainable + frame)
    full = (64 * 32 + 32 + 32 * 10 + 10) * 4
    assert trainable < full / 2


def test_base_is_shared_and_frozen_across_rounds(tmp_path: Any) -> None:
    s = validate(raw())
    exp = build(s)
    from fedkit.models import init_model

    spec = exp.plan.model.spec
    a = init_model(spec, (64,), 10, 0)
    b = init_model(spec, (64,), 10, 1)
    assert a is b  # one module per process and thread: clients share the frozen base
    base = [p.detach().clone() for n, p in a.inner.named_parameters() if not p.requires_grad]
    run_scenario(s, tmp_path / "run")
    after = [p.detach() for n, p in a.inner.named_parameters() if not p.requires_grad]
    assert all(bool((x == y).all()) for x, y in zip(base, after, strict=True))
    # a cache hit hands back the initial adapters, not what the last task left behind
    assert all(np.array_equal(x, y) for x, y in zip(get_params(init_model(spec, (64,), 10, 0)),
                                                    exp.init_params, strict=True))


def test_targets_naming_no_linear_is_refused_with_candidates() -> None:
    with pytest.raises(ScenarioError) as e:
        validate(raw(peft={"method": "lora", "lora": {"r": 4, "targets": ["11"]}}))
    msg = str(e.value)
    assert "'11' names no Linear module" in msg and "did you mean '1'" in msg and "1, 3" in msg


def test_unknown_aggregation_is_refused() -> None:
    with pytest.raises(ScenarioError, match="did you mean 'fedit'"):
        validate(raw(peft={"method": "lora", "lora": {"targets": ["1"]}, "aggregation": "fedti"}))


def test_codecs_and_error_feedback_apply_to_adapters(tmp_path: Any) -> None:
    dense = validate(raw())
    sparse = validate(raw(compression={"uplink": "ef:topk(ratio=0.1)"}))
    run_scenario(dense, tmp_path / "dense")
    run_scenario(sparse, tmp_path / "sparse")
    up = [sum(r["bytes_up"] for r in read_metrics(tmp_path / p)) for p in ("dense", "sparse")]
    assert up[1] < up[0] / 3


def test_bias_method_trains_biases_and_head_only() -> None:
    exp = build(validate(raw(peft={"method": "bias", "train_also": ["3"]})))
    assert [a.shape for a in exp.init_params] == [(32,), (10, 32), (10,)]  # hidden bias, head


def test_resumed_run_equals_a_straight_one(tmp_path: Any) -> None:
    straight = run_scenario(validate(raw(rounds=3)), tmp_path / "straight")
    run_scenario(validate(raw(rounds=2)), tmp_path / "resumed")
    resumed = run_scenario(validate(raw(rounds=3)), tmp_path / "resumed", resume=True)
    assert resumed["params_sha256"] == straight["params_sha256"]
    kept = sorted(p.name for p in (tmp_path / "resumed" / "adapters").iterdir())
    assert kept == ["round-0001.npz", "round-0002.npz", "round-0003.npz"]


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(ScenarioError, match=r"pip install 'fedkit\[llm\]'"):
        validate(raw())


def test_evaluation_forward_in_chunks_gives_the_same_outputs() -> None:
    import torch

    from fedkit.models import init_model

    m = init_model(build(validate(raw())).plan.model.spec, (64,), 10, 0)
    x = torch.randn(600, 64)
    with torch.no_grad():
        chunked = m(x)
    whole = m(x).detach()
    torch.testing.assert_close(chunked, whole)


@pytest.mark.parametrize(("aggregation", "sent"), [("ffa", [1, 2, 3]), ("fedsvd", [1, 2, 3]), ("fedsa", [0, 2, 3])])
def test_uplink_carries_only_the_factors_a_variant_shares(tmp_path: Any, aggregation: str, sent: list[int]) -> None:
    """FFA/FedSVD's frozen A and FedSA's personal B never travel up (their delta is known to
    be zero): the uplink is the papers' one factor + head, not a zero-padded copy of fedit's."""
    s = validate(raw(peft={**raw()["peft"], "aggregation": aggregation}))
    exp = build(s)
    up = [exp.init_params[i] for i in sent]
    frame = 4 + 2 + len("identity") + packed_nbytes(up)
    run_scenario(s, tmp_path / "run")
    for row in read_metrics(tmp_path / "run"):
        assert row["bytes_up"] == 3 * frame < 3 * (4 + 2 + len("identity") + packed_nbytes(exp.init_params))


def test_ffa_keeps_a_at_its_shared_initialisation_through_the_engine(tmp_path: Any) -> None:
    s = validate(raw(peft={**raw()["peft"], "aggregation": "ffa"}))
    exp = build(s)
    run_scenario(s, tmp_path / "run")
    final = RunDir(tmp_path / "run", resume=True).read_checkpoint()
    assert final is not None and final.round == 2
    assert np.array_equal(final.params[0], exp.init_params[0])  # lora_A never moves
    assert not np.array_equal(final.params[1], exp.init_params[1])  # lora_B trains


def test_fedsvd_leaves_orthonormal_a_through_the_engine(tmp_path: Any) -> None:
    s = validate(raw(peft={**raw()["peft"], "aggregation": "fedsvd"}))
    run_scenario(s, tmp_path / "run")
    final = RunDir(tmp_path / "run", resume=True).read_checkpoint()
    assert final is not None
    a = final.params[0].astype(np.float64)
    assert np.allclose(a @ a.T, np.eye(a.shape[0]), atol=1e-5)


def test_fedsa_keeps_b_on_each_client_and_evaluates_personalised(tmp_path: Any) -> None:
    s = validate(raw(rounds=3, train={"steps": 30, "batch_size": 16, "lr": 0.1},
                     peft={**raw()["peft"], "aggregation": "fedsa"},
                     evaluation={"centralized": True, "federated": True},
                     data={"dataset": {"name": "digits"}, "partition": {"name": "dirichlet", "alpha": 0.3}}))
    exp = build(s)
    run_scenario(s, tmp_path / "run")
    final = RunDir(tmp_path / "run", resume=True).read_checkpoint()
    assert final is not None
    assert not np.array_equal(final.params[0], exp.init_params[0])  # A is shared and trained
    assert np.array_equal(final.params[1], exp.init_params[1])  # the global B never moves: B stays home
    rows = read_metrics(tmp_path / "run")
    # clients evaluate the global A with their own B (under fedit both figures are the same model's)
    assert any(r["fed_acc"] != r["test_acc"] for r in rows)
    assert rows[-1]["fed_acc"] > rows[0]["fed_acc"] + 0.1  # and their B keeps training round to round


def _fed(tmp_path: Any, aggregation: str, test: str) -> list[dict[str, Any]]:
    s = validate(raw(rounds=3, train={"steps": 30, "batch_size": 16, "lr": 0.1},
                     peft={**raw()["peft"], "aggregation": aggregation},
                     evaluation={"centralized": True, "federated": True, "federated_test": test},
                     data={"dataset": {"name": "digits"}, "partition": {"name": "dirichlet", "alpha": 0.3}}))
    run_scenario(s, tmp_path / f"{aggregation}-{test}")
    return read_metrics(tmp_path / f"{aggregation}-{test}")


def test_fedsa_personalised_accuracy_on_test_slices_matched_to_each_client(tmp_path: Any) -> None:
    """A client's own B is judged on data like its own (federated_test: matched): far above the
    uniform slices, where a B fitted to a skewed label mix meets every class."""
    uniform, matched = (_fed(tmp_path, "fedsa", t)[-1]["fed_acc"] for t in ("uniform", "matched"))
    assert matched > uniform + 0.15


def test_matched_slices_cover_the_test_set_so_one_global_model_scores_its_test_accuracy(tmp_path: Any) -> None:
    for row in _fed(tmp_path, "fedit", "matched"):
        assert row["fed_acc"] == pytest.approx(row["test_acc"], abs=1e-9)


@pytest.mark.parametrize(("aggregation", "strategy"), [("ffa", {"name": "fedadam", "lr": 0.01}),
                                                        ("fedsa", {"name": "fedprox", "mu": 0.1}),
                                                        ("fedex", {"name": "fedprox", "mu": 0.1})])
def test_lora_variants_compose_with_fedprox_and_fedopt_server_steps(tmp_path: Any, aggregation: str,
                                                                    strategy: dict[str, Any]) -> None:
    s = validate(raw(peft={**raw()["peft"], "aggregation": aggregation}, strategy=strategy))
    exp = build(s)
    summary = run_scenario(s, tmp_path / "run")
    plain = run_scenario(validate(raw(peft={**raw()["peft"], "aggregation": aggregation})), tmp_path / "plain")
    assert summary["params_sha256"] != plain["params_sha256"]  # the server step / proximal term acted
    final = RunDir(tmp_path / "run", resume=True).read_checkpoint()
    assert final is not None and all(np.isfinite(a).all() for a in final.params)
    if aggregation == "ffa":  # FedAdam moves B (and the head); A's delta is zero, so A never moves
        assert np.array_equal(final.params[0], exp.init_params[0])
        assert not np.array_equal(final.params[1], exp.init_params[1])


@pytest.mark.parametrize(("aggregation", "strategy", "text"), [
    ("fedex", {"name": "fedadam"}, "composes with server SGD only"),
    ("ffa", {"name": "krum"}, "reduce is the weighted mean"),
    ("fedsvd", {"name": "fedbuff"}, "reduce is the weighted mean"),
])
def test_lora_variants_refuse_strategies_their_maths_does_not_allow(aggregation: str, strategy: dict[str, Any],
                                                                   text: str) -> None:
    with pytest.raises(ScenarioError, match=text):
        validate(raw(peft={**raw()["peft"], "aggregation": aggregation}, strategy=strategy))
