"""What ``fedkit describe`` says about a fine-tuning scenario: how much of the model trains and
what a client sends and receives per round, against full fine-tuning of the same model.

    >>> from fedkit.peft.model import build
    >>> m = build((64,), 10, {"name": "mlp", "hidden": [32]},
    ...           {"method": "lora", "lora": {"r": 4, "targets": ["1"]}, "train_also": ["3"]})
    >>> s = summary(m)
    >>> s["trainable parameters"], s["total parameters"]
    (714, 2410)
"""

from __future__ import annotations

from typing import Any

from fedkit.peft.model import Trainable


def summary(module: Trainable) -> dict[str, Any]:
    """Trainable vs total parameters and dense float32 bytes per client per round (the payload
    under the identity codec, uplink and downlink alike; a codec shrinks both the same way)."""
    trainable = module.trainable_params
    per_round = sum(p.numel() * p.element_size() for p in module.parameters())
    full = 4 * module.total_params
    return {
        "trainable parameters": trainable,
        "total parameters": module.total_params,
        "trainable share": f"{100 * trainable / max(module.total_params, 1):.2f}%",
        "bytes per client per round (each way)": per_round,
        "full fine-tuning (each way)": full,
        "saving vs full fine-tuning": f"{full / max(per_round, 1):.1f}x",
        "base model sha256": module.base_sha256[:16] + "...",
    }
