"""Split-learning privacy (fedkit/split/privacy.py): distance correlation has the values its
formula gives, NoPeek lowers it, activation noise is keyed, the label-leak attack works on an
undefended binary task, bad configurations are refused, and a defended run is the same over
``--mode processes``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedkit.data.datasets import load_digits
from fedkit.experiment import run_scenario
from fedkit.launch import run_processes
from fedkit.models import TrainConfig, init_model
from fedkit.rng import rng
from fedkit.scenario import validate
from fedkit.split.privacy import (
    Defence,
    Guard,
    LeakMeter,
    distance_correlation,
    evaluate_privacy,
    label_leakage_auc,
)
from fedkit.split.schemes import initial, make_setup, run_round
from fedkit.split.server import ServerConfig, server_init
from tests.runtime.test_split_engine import split_raw

pytestmark = pytest.mark.timeout(300)


def _gauss(n: int, rho: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = rng(seed, "test-dcor")
    x = g.standard_normal(n)
    z = rho * x + math.sqrt(1 - rho**2) * g.standard_normal(n)
    return torch.from_numpy(x[:, None]), torch.from_numpy(z[:, None])


def _population_dcor(rho: float) -> float:
    """dCor of a bivariate normal with correlation rho (Székely, Rizzo & Bakirov 2007, Thm 7)."""
    r = abs(rho)
    num = r * math.asin(r) + math.sqrt(1 - r**2) - r * math.asin(r / 2) - math.sqrt(4 - r**2) + 1
    return math.sqrt(num / (1 + math.pi / 3 - math.sqrt(3)))


def test_distance_correlation_known_values() -> None:
    x = torch.from_numpy(rng(1, "x").standard_normal((64, 5)))
    assert float(distance_correlation(x, x)) == pytest.approx(1.0, abs=1e-5)
    q, _ = torch.linalg.qr(torch.from_numpy(rng(2, "q").standard_normal((5, 5))))
    assert float(distance_correlation(x, 3 * x @ q + 7)) == pytest.approx(1.0, abs=1e-5)  # rotation, scale, shift
    # two samples always give 1 (the double-centred matrices are +-d/2)
    assert float(distance_correlation(x[:2], torch.randn(2, 3, dtype=torch.float64))) == pytest.approx(1.0, abs=1e-5)
    # the bivariate-normal closed form (0.4541 at rho = 0.5, 0.8682 at 0.9); independent samples
    # give 0 in the population, and the V-statistic's small positive bias, ~1/sqrt(n), here
    for rho in (0.5, 0.9):
        got = float(distance_correlation(*_gauss(1500, rho)))
        assert got == pytest.approx(_population_dcor(rho), abs=0.02), rho
    assert _population_dcor(0.0) == pytest.approx(0.0, abs=1e-12)
    assert 0 < float(distance_correlation(*_gauss(1500, 0.0))) < 0.08
    with pytest.raises(ValueError, match="paired samples"):
        distance_correlation(x, x[:10])


def test_distance_correlation_is_differentiable() -> None:
    x, z = _gauss(32, 0.8)
    z = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(distance_correlation(x, z), [z])
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_noise_is_keyed() -> None:
    a = torch.ones(4, 3)
    g = Guard(Defence(noise=0.5), seed=7, round=1, client="c0")
    same = Guard(Defence(noise=0.5), seed=7, round=1, client="c0").smash(a, 2)
    np.testing.assert_array_equal(g.smash(a, 2), same)
    others = [Guard(Defence(noise=0.5), 7, 2, "c0").smash(a, 2), Guard(Defence(noise=0.5), 7, 1, "c1").smash(a, 2),
              g.smash(a, 3), Guard(Defence(noise=0.5), 8, 1, "c0").smash(a, 2)]
    for o in others:  # another round, client, step or seed: other noise
        assert not np.array_equal(o, same)
    assert abs(float((same - 1).std()) - 0.5) < 0.35
    np.testing.assert_array_equal(Guard(Defence(), 7, 1, "c0").smash(a, 2), a.numpy())  # off: unchanged
    assert Guard(Defence(), 7, 1, "c0").penalty(a, a) is None


def _dcor_after(defence: Defence, rounds: int = 3) -> tuple[float, float]:
    """(dCor(x, A) on held-out digits, accuracy) after a small SplitFed V2 run of an MLP."""
    ds = load_digits(0)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    parts = np.array_split(rng(0, "test-split").permutation(len(y)), 3)
    data = {f"c{i}": (x[p], y[p]) for i, p in enumerate(parts)}
    setup = make_setup("splitfed_v2", init_model({"name": "mlp", "hidden": [32, 32]}, (64,), 10, seed=1), "2", (64,), 10)
    cp, sp = initial(setup)
    tr = TrainConfig(lr=0.3, batch_size=32, steps=30)
    ss = server_init(ServerConfig("splitfed_v2", setup.server_module, tr), sp)
    for r in range(rounds):
        cp, ss, _ = run_round(setup, cp, ss, data, r, train=tr, server_opt=tr, defence=defence)
    from fedkit.split.schemes import whole

    model, join = whole(setup)
    from fedkit.models import set_params

    set_params(model, join(cp, ss.shared.params))
    xt = torch.from_numpy(ds.x_test)
    with torch.no_grad():
        a = model[0](xt)
        acc = float((model(xt).argmax(1).numpy() == ds.y_test).mean())
    return float(distance_correlation(xt, a)), acc


def test_nopeek_lowers_distance_correlation() -> None:
    plain, acc_plain = _dcor_after(Defence())
    peek, _ = _dcor_after(Defence(nopeek=1.0))
    assert acc_plain > 0.8 and plain > 0.85
    assert peek < plain - 0.2, (plain, peek)  # ~0.94 -> ~0.53


def test_leak_auc_of_scores() -> None:
    y = np.array([0, 0, 0, 1, 1])
    assert label_leakage_auc(np.array([1, 2, 3, 9, 8]), y) == 1.0
    assert label_leakage_auc(np.array([9, 8, 7, 1, 2]), y) == 1.0  # orientation-free
    with pytest.raises(ValueError, match="both classes"):
        label_leakage_auc(np.ones(3), np.zeros(3, dtype=int))
    m = LeakMeter()
    assert m.auc() is None
    m.add(np.ones((2, 3), np.float32), np.array([0, 0]))
    assert m.auc() is None  # one class so far


def _binary(scheme: str = "vanilla", rounds: int = 2, **split: Any) -> dict[str, Any]:
    raw = split_raw(scheme, rounds=rounds, split=split)
    raw["data"]["dataset"] = {"name": "digits", "positive": [0]}  # one positive in ten
    return raw


def test_label_leakage_is_high_without_defence(tmp_path: Path) -> None:
    s = validate(_binary(privacy_eval=["label_leakage"]))
    summary = run_scenario(s, tmp_path / "run")
    assert summary["privacy_leak_auc"] > 0.9, summary
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0.5 <= r["leak_auc"] <= 1 for r in rows)  # per round, in metrics.jsonl
    assert "privacy_recon_mse" not in summary  # only what the scenario asks for


def test_reconstruction_decodes_smashed_data_and_noise_hurts_it() -> None:
    ds = load_digits(0)
    setup = make_setup("vanilla", init_model({"name": "mlp", "hidden": [32, 16]}, (64,), 10, seed=1), "2", (64,), 10)
    cp, sp = initial(setup)
    data = (ds.x_train[:600], ds.x_test)
    clean = evaluate_privacy(setup, cp, sp, data, epochs=15)
    noisy = evaluate_privacy(setup, cp, sp, data, epochs=15, defence=Defence(noise=2.0))
    assert clean["privacy_recon_mse"] < 0.6 * clean["privacy_recon_base_mse"], clean  # 32 random ReLU features
    assert noisy["privacy_recon_mse"] > clean["privacy_recon_mse"] and noisy["privacy_dcor"] < clean["privacy_dcor"]
    assert evaluate_privacy(setup, cp, sp, data, epochs=15) == clean  # keyed: the same numbers again


@pytest.mark.parametrize(
    "split,data,match",
    [
        ({"defence": {}}, None, "give nopeek"),
        ({"defence": {"nopeek": {"weight": 0}}}, None, "greater than 0"),
        ({"defence": {"noise": {"sigma": float("nan")}}}, None, "finite"),
        ({"defence": {"noise": {"std": 1.0}}}, None, "sigma"),
        ({"privacy_eval": ["label_leakage", "label_leakage"]}, None, "twice"),
        ({"privacy_eval": ["membership"]}, None, "label_leakage"),
        ({"privacy_eval": ["label_leakage"]}, {"name": "digits"}, "binary task"),
    ],
)
def test_bad_config_is_refused(split: dict[str, Any], data: dict[str, Any] | None, match: str) -> None:
    raw = _binary(**split)
    if data is not None:
        raw["data"]["dataset"] = data
    with pytest.raises(ValueError, match=match):
        validate(raw)


@pytest.mark.parametrize("scheme,why", [("ushape", "keeps the labels"), ("local_loss", "no gradients")])
def test_label_leakage_needs_labels_up_and_gradients_down(scheme: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        validate(_binary(scheme, privacy_eval=["label_leakage"]))


def test_defence_rejects_negative_values_and_digits_bad_positives() -> None:
    with pytest.raises(ValueError, match="nopeek"):
        Defence(nopeek=-1.0)
    for bad in ([3, 3], [], list(range(10)), [10]):
        with pytest.raises(ValueError, match="distinct digits"):
            load_digits(0, positive=bad)
    ds = load_digits(0, positive=[0])
    assert ds.num_classes == 2 and 0.05 < ds.y_train.mean() < 0.15


def test_defended_run_is_identical_in_processes(tmp_path: Path) -> None:
    defence = {"nopeek": {"weight": 0.5}, "noise": {"sigma": 0.3}}
    s = validate(_binary("splitfed_v1", defence=defence, privacy_eval=["label_leakage"]))
    local = run_scenario(s, tmp_path / "inproc")
    remote = run_processes(s, tmp_path / "procs", 1)
    assert remote["params_sha256"] == local["params_sha256"]
    assert remote["server_params_sha256"] == local["server_params_sha256"]
    assert remote["privacy_leak_auc"] == local["privacy_leak_auc"]
    plain = run_scenario(validate(_binary("splitfed_v1")), tmp_path / "plain")
    assert plain["params_sha256"] != local["params_sha256"]  # the defence did change training
