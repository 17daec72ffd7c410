"""Server-side evaluation and metric aggregation hooks.

``evaluation: {fn: "examples.custom_eval:evaluate"}`` replaces the central evaluation: it gets the
model (holding the global parameters, in eval mode) and the central test data and returns metrics
(``loss`` and ``accuracy`` become ``test_loss``/``test_acc``, any other key ``test_<key>``).
``evaluation: {metrics_fn: "examples.custom_eval:combine"}`` decides how clients' metrics combine
into the round's row: ``fn(kind, [(num_examples, metrics), ...])`` with kind "train" or "evaluate".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from fedkit.models import LocalData


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: LocalData) -> dict[str, float]:
    out = model(data.x)
    pred = out.argmax(1)
    recall = [float((pred[data.y == c] == c).float().mean()) for c in data.y.unique()]
    return {
        "loss": float(F.cross_entropy(out, data.y)),
        "accuracy": float((pred == data.y).float().mean()),
        "balanced_acc": sum(recall) / len(recall),
    }


def combine(kind: str, pairs: Sequence[tuple[int, Mapping[str, float]]]) -> dict[str, float]:
    """Weighted training loss plus the worst client's loss (a fairness view)."""
    if kind != "train":
        total = sum(n for n, _ in pairs) or 1
        return {"fed_acc": sum(n * m.get("accuracy", 0.0) for n, m in pairs) / total}
    losses = [m["train_loss"] for _, m in pairs if "train_loss" in m]
    total = sum(n for n, m in pairs if "train_loss" in m) or 1
    return {
        "train_loss": sum(n * m["train_loss"] for n, m in pairs if "train_loss" in m) / total,
        "worst_train_loss": max(losses, default=float("nan")),
    }
