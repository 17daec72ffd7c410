"""A transformers folder fine-tuned with LoRA: loading, names, bytes, bad input, export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedkit.cli import main
from fedkit.experiment import load_model, run_scenario
from fedkit.report.run_dir import read_metrics
from fedkit.scenario import ScenarioError, validate
from fedkit.scenario.build import build

from .conftest import hf_raw, token_data


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return token_data(tmp_path / "tokens.npz")


def test_trainable_names_follow_peft_state_dict(tiny_bert: Path, data: Path) -> None:
    from peft.utils import get_peft_model_state_dict

    exp = build(validate(hf_raw(tiny_bert, data)))
    from fedkit.models import init_model

    m = init_model(exp.plan.model.spec, (12,), 3, 0)
    assert list(m.state_dict()) == list(get_peft_model_state_dict(m.inner))
    assert m.trainable_params == sum(a.size for a in exp.init_params) == 2 * 2 * (4 * 32 + 32 * 4) + 32 * 3 + 3
    assert m.total_params > 15 * m.trainable_params


def test_run_trains_only_adapters_and_exports(tiny_bert: Path, data: Path, tmp_path: Path) -> None:
    s = validate(hf_raw(tiny_bert, data))
    init = build(s).init_params
    trainable = sum(a.nbytes for a in init)
    run_scenario(s, tmp_path / "run")
    for row in read_metrics(tmp_path / "run"):
        assert trainable < row["bytes_up"] / 2 < trainable + 200  # 2 clients: adapters + frame heads
    assert sorted(p.name for p in (tmp_path / "run" / "adapters").iterdir()) == ["round-0001.npz", "round-0002.npz"]

    model = load_model(tmp_path / "run")
    x = torch.from_numpy(np.load(data)["x"][:7]).float()
    with torch.no_grad():
        want = model(x)
    assert main(["export", str(tmp_path / "run"), "--adapter", str(tmp_path / "ad"),
                 "--merged", str(tmp_path / "merged")]) == 0
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    ids = x.long()
    mask = (ids != 0).long()
    torch.manual_seed(123)  # the adapter folder holds the head: the base's new head is replaced
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=3, local_files_only=True)
    adapted = PeftModel.from_pretrained(base, str(tmp_path / "ad")).eval()
    merged = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged"), local_files_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(adapted(input_ids=ids, attention_mask=mask).logits, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(merged(input_ids=ids, attention_mask=mask).logits, want, rtol=1e-5, atol=1e-5)
    assert not torch.equal(want, build_untrained(s)(x))  # training moved the model


def build_untrained(s: Any) -> torch.nn.Module:
    from fedkit.models import init_model

    spec = build(s).plan.model.spec
    m = init_model(spec, (12,), 3, 0)
    m.train(False)
    return lambda x: m(x).detach()  # type: ignore[return-value]


def test_missing_folder_is_a_validation_error(tmp_path: Path, data: Path) -> None:
    with pytest.raises(ScenarioError, match="no folder"):
        validate(hf_raw(tmp_path / "nope", data))


def test_config_the_task_cannot_use(tmp_path: Path, data: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                           image_size=8, patch_size=4)
    CLIPVisionModel(cfg).save_pretrained(tmp_path / "vision")
    with pytest.raises(ScenarioError, match="has no sequence-classification model"):
        validate(hf_raw(tmp_path / "vision", data))


def test_bad_target_lists_linear_names_with_did_you_mean(tiny_bert: Path, data: Path) -> None:
    raw = hf_raw(tiny_bert, data)
    raw["peft"]["lora"]["targets"] = ["qurey"]
    with pytest.raises(ScenarioError) as e:
        validate(raw)
    msg = str(e.value)
    assert "did you mean 'query'" in msg and "classifier" in msg and "value" in msg


def test_cli_validate_exits_2_on_bad_target(tiny_bert: Path, data: Path, tmp_path: Path) -> None:
    import yaml

    raw = hf_raw(tiny_bert, data)
    raw["peft"]["lora"]["targets"] = ["valu"]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    assert main(["validate", str(tmp_path / "s.yaml")]) == 2


def test_wrong_adapter_layout_is_refused_by_acceptance(tiny_bert: Path, data: Path) -> None:
    from fedkit.compression import make
    from fedkit.runtime.accept import Rejected, accept
    from fedkit.types import Encoded, Reply, Task

    exp = build(validate(hf_raw(tiny_bert, data)))
    good = exp.init_params
    bad_rank = [np.zeros((8, a.shape[1]), np.float32) if i == 0 else a for i, a in enumerate(good)]
    codec = make("identity")
    task = Task(1, "client-0", "train", Encoded("identity", b""), None)
    for params in (bad_rank, good[:-1]):
        _, enc = codec.encode(codec.init(params), params, None)
        reply = Reply(task.task_id, "client-0", 1, 10, update=enc)
        with pytest.raises(Rejected):
            accept(exp.plan.acceptance, task, reply)


def test_describe_shows_trainable_share_and_bytes(tiny_bert: Path, data: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(hf_raw(tiny_bert, data)))
    assert main(["describe", str(tmp_path / "s.yaml")]) == 0
    text = capsys.readouterr().out
    assert "trainable parameters" in text and "1,123" in text and "20,995" in text
    assert "4.5 KB" in text and "84.0 KB" in text  # 1,123 x 4 B each way vs 20,995 x 4 B


def test_hf_without_peft_is_full_fine_tuning(tiny_bert: Path, data: Path) -> None:
    raw = hf_raw(tiny_bert, data)
    del raw["peft"]
    exp = build(validate(raw))
    assert sum(a.size for a in exp.init_params) == 20_995  # every parameter, the new head included


def test_lora_pairs_by_common_prefix(tiny_bert: Path, data: Path) -> None:
    from fedkit.peft.model import lora_pairs
    from fedkit.scenario.peft import trainable_names

    names = trainable_names(validate(hf_raw(tiny_bert, data)))
    pairs = lora_pairs(names)
    assert len(pairs) == 4  # query and value in 2 layers
    for a, b in pairs:
        assert names[a].replace("lora_A", "lora_B") == names[b]
    assert names[-2:] == ["base_model.model.classifier.weight", "base_model.model.classifier.bias"]


def test_stacked_execution_is_refused(tiny_bert: Path, data: Path) -> None:
    with pytest.raises(ScenarioError, match="stacked"):
        validate(hf_raw(tiny_bert, data, execution={"kind": "stacked"}))
