"""The centralized baseline: the scenario's model on the union of its clients' data, the same
number of passes as the federated run, reproducible."""

from __future__ import annotations

import pytest
import torch

from fedkit.centralized import centralized, main
from fedkit.scenario import validate
from tests.conftest import tiny_raw


@pytest.fixture(autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_same_passes_as_the_federated_run_and_reproducible() -> None:
    s = validate(tiny_raw(rounds=3, train={"epochs": 2, "batch_size": 16, "lr": 0.1}))
    a, b = centralized(s), centralized(s)
    assert a == b
    assert a["epochs"] == 6 and a["samples"] == 1438  # every client's training sample, 3 rounds x 2 epochs
    assert a["steps"] == 6 * -(-1438 // 16)
    assert a["accuracy"] > 0.8  # digits, a 16-unit MLP, 6 epochs (10% is chance)


def test_steps_budget_counts_the_sampled_clients() -> None:
    s = validate(tiny_raw(rounds=2, train={"steps": 5, "batch_size": 8, "lr": 0.1}))  # 6 clients, half per round
    assert centralized(s)["steps"] == 2 * 5 * 3


def test_split_section_is_ignored_and_cli_prints(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import yaml

    raw = tiny_raw(rounds=1, split={"scheme": "splitfed_v1", "cut": "1"})
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(raw))
    assert main([str(f)]) == 0
    assert '"accuracy"' in capsys.readouterr().out
    assert centralized(validate(raw)) == centralized(validate(tiny_raw(rounds=1)))
