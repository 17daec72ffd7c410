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

DOWNLINK_VARIES = {
    "fedex": "varies per round: the adapters plus each round's residual folded into the frozen base",
    "flora": "varies per round: the stacked factors grow with the clients of the round (rank sum)",
    "flexlora": "varies per client: each gets the global product truncated to its own rank",
}


def summary(module: Trainable, aggregation: str | None = None) -> dict[str, Any]:
    """Trainable vs total parameters and dense float32 bytes per client per round (the payload
    under the identity codec, uplink and downlink alike; a codec shrinks both the same way),
    against full fine-tuning of the same model. ``aggregation``: a LoRA variant; where it needs
    less uplink (a frozen or personal factor is never uploaded: fedkit.peft.model.unsent) or
    sends a downlink of another size, its own lines say so."""
    trainable = module.trainable_params
    per_round = sum(p.numel() * p.element_size() for p in module.parameters())
    full = 4 * module.total_params
    out: dict[str, Any] = {
        "trainable parameters": trainable,
        "total parameters": module.total_params,
        "trainable share": f"{100 * trainable / max(module.total_params, 1):.2f}%",
        "bytes per client per round (each way)": per_round,
        "full fine-tuning (each way)": full,
        "share of full fine-tuning": f"{100 * per_round / max(full, 1):.2f}% ({full / max(per_round, 1):.1f}x less)",
    }
    if aggregation not in (None, "fedit"):
        from fedkit.aggregation.lora import lora_variant

        variant = lora_variant(aggregation)
        state = module.state_dict()
        needed = sum(state[n].numel() * state[n].element_size() for n in variant.uplink(list(state)))
        if needed != per_round:
            out["bytes up the variant needs"] = needed
        if aggregation in DOWNLINK_VARIES:
            out["downlink"] = DOWNLINK_VARIES[aggregation]
    out["base model sha256"] = module.base_sha256[:16] + "..."
    return out
