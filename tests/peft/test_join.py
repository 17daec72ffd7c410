"""A device whose pre-trained base differs from the server's is refused at Join (both hashes
in the message), and at its first task when it declared none; resuming with another rank or
other targets is refused unless forced."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from fedkit.peft.join import CAPABILITY, admit_base, base_capabilities
from fedkit.peft.model import build
from fedkit.transport.client import run_client
from fedkit.transport.server import GrpcServer

from .conftest import CLASSES, hf_raw, token_data


def _never(task: object) -> object:
    raise AssertionError("a refused device gets no task")


def test_other_base_is_refused_at_join_with_both_hashes(tiny_bert: Path) -> None:
    ours = base_capabilities(tiny_bert)[CAPABILITY]
    server = GrpcServer("127.0.0.1:0", insecure=True, admit=admit_base(ours))
    port = server.start()
    try:
        with pytest.raises(grpc.RpcError) as e:
            run_client(f"127.0.0.1:{port}", _never, name="dev-1", insecure=True,  # type: ignore[arg-type]
                       capabilities={CAPABILITY: "f" * 64}, max_attempts=1, wait_s=10)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert ours in e.value.details() and "f" * 64 in e.value.details()
        assert server.clients() == []
    finally:
        server.stop()


def test_same_base_is_admitted(tiny_bert: Path) -> None:
    ours = base_capabilities(tiny_bert)[CAPABILITY]
    admit = admit_base(ours)
    assert admit("dev-1", {CAPABILITY: ours}) is None
    assert admit("dev-1", {}) is None  # undeclared: checked at the first task instead
    assert admit_base(None)("dev-1", {CAPABILITY: "x"}) is None  # no pre-trained base


def test_first_task_refuses_a_different_local_base(tiny_bert: Path, tmp_path: Path) -> None:
    base = {"hf": str(tiny_bert), "task": "sequence-classification", "num_labels": CLASSES}
    with pytest.raises(ValueError, match="server base sha256 0000.* this device's [0-9a-f]{64}"):
        build((12,), CLASSES, base, None, 0, base_sha256="0" * 64)


def test_rank_change_on_resume_needs_force(tiny_bert: Path, tmp_path: Path) -> None:
    from fedkit.experiment import run_scenario
    from fedkit.report.run_dir import RunDirExists
    from fedkit.scenario import validate

    data = token_data(tmp_path / "tokens.npz")
    raw = hf_raw(tiny_bert, data, rounds=1)
    run_scenario(validate(raw), tmp_path / "run")
    raw2 = hf_raw(tiny_bert, data, rounds=2)
    raw2["peft"]["lora"]["r"] = 8
    with pytest.raises(RunDirExists, match="peft.lora.r"):
        run_scenario(validate(raw2), tmp_path / "run", resume=True)
    raw3 = hf_raw(tiny_bert, data, rounds=2)
    raw3["peft"]["lora"]["targets"] = ["query"]
    with pytest.raises(RunDirExists, match="peft.lora.targets"):
        run_scenario(validate(raw3), tmp_path / "run", resume=True)
