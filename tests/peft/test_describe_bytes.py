"""``fedkit describe`` on fine-tuning scenarios: bytes per client per round against full
fine-tuning, for each method, and the lines of variants whose uplink / downlink differ."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedkit.cli import main
from fedkit.peft.describe import summary
from fedkit.peft.model import build

from .conftest import hf_raw, token_data

MLP = {"name": "mlp", "hidden": [32]}
LORA = {"method": "lora", "lora": {"r": 4, "alpha": 8, "targets": ["1"]}, "train_also": ["3"]}
FULL = 4 * (64 * 32 + 32 + 32 * 10 + 10)  # every float32 parameter of the mlp


def test_lora_share_of_full_fine_tuning_and_variant_lines() -> None:
    m = build((64,), 10, MLP, LORA)
    lora = 4 * (4 * 64 + 32 * 4 + 10 * 32 + 10)
    s = summary(m)
    assert s["bytes per client per round (each way)"] == lora and s["full fine-tuning (each way)"] == FULL
    assert s["share of full fine-tuning"] == f"{100 * lora / FULL:.2f}% ({FULL / lora:.1f}x less)"
    assert "bytes up the variant needs" not in s and "downlink" not in s
    ffa = summary(m, "ffa")  # lora_A never changes: only B and the head need to go up
    assert ffa["bytes up the variant needs"] == 4 * (32 * 4 + 10 * 32 + 10)
    assert "varies per round" in summary(m, "flora")["downlink"]
    assert "varies per round" in summary(m, "fedex")["downlink"]
    assert "own rank" in summary(m, "flexlora")["downlink"]


def test_adapter_and_bias_bytes() -> None:
    ad = summary(build((64,), 10, MLP, {"method": "adapter", "adapter": {"dim": 4, "targets": ["1"]}}))
    assert ad["bytes per client per round (each way)"] == 4 * (4 * 32 + 4 + 32 * 4 + 32)
    bias = summary(build((64,), 10, MLP, {"method": "bias"}))
    assert bias["bytes per client per round (each way)"] == 4 * (32 + 10)


@pytest.mark.parametrize("aggregation", ["fedit", "ffa"])
def test_cli_describe_prints_the_comparison(tiny_bert: Path, tmp_path: Path, aggregation: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    raw = hf_raw(tiny_bert, token_data(tmp_path / "tokens.npz"))
    raw["peft"]["aggregation"] = aggregation
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    assert main(["describe", str(tmp_path / "s.yaml")]) == 0
    text = capsys.readouterr().out
    assert "share of full fine-tuning" in text and "5.35% (18.7x less)" in text  # 4.5 KB of 84.0 KB
    assert ("bytes up the variant needs" in text) == (aggregation == "ffa")
