"""How heterogeneous a partition is: sizes, label histograms and label skew.

Label skew is the mean total-variation distance TV(P_i, P) = 1/2 sum_c |P_i(c) - P(c)| between
each non-empty client's label distribution P_i and the global one P: 0 for a perfectly IID split,
approaching 1 - max_c P(c) when every client holds a single label. It is bounded and
interpretable, so runs with different partitioners can be compared on one axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PartitionStats", "describe"]


@dataclass(frozen=True, eq=False)  # arrays: compare fields explicitly
class PartitionStats:
    """Per-client counts plus summary numbers; printing is left to the CLI."""

    sizes: np.ndarray  # (num_clients,) int64
    label_counts: np.ndarray  # (num_clients, num_classes) int64

    @property
    def num_clients(self) -> int:
        return int(self.label_counts.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.label_counts.shape[1])

    @property
    def size_min(self) -> int:
        return int(self.sizes.min())

    @property
    def size_max(self) -> int:
        return int(self.sizes.max())

    @property
    def size_mean(self) -> float:
        return float(self.sizes.mean())

    @property
    def size_std(self) -> float:
        return float(self.sizes.std())

    @property
    def labels_per_client(self) -> np.ndarray:
        """Number of distinct labels each client holds."""
        return (self.label_counts > 0).sum(axis=1)

    @property
    def mean_labels_per_client(self) -> float:
        return float(self.labels_per_client.mean())

    @property
    def client_tv(self) -> np.ndarray:
        """TV distance of each client's label distribution from the global one (NaN if empty)."""
        total = self.label_counts.sum(axis=0)
        glob = total / max(int(total.sum()), 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            local = self.label_counts / self.sizes[:, None]
        return 0.5 * np.abs(local - glob).sum(axis=1)

    @property
    def label_skew(self) -> float:
        """Mean TV distance over non-empty clients: 0 = IID labels, larger = more skewed."""
        tv = self.client_tv
        tv = tv[~np.isnan(tv)]
        return float(tv.mean()) if tv.size else 0.0

    def summary(self) -> dict[str, float]:
        return {
            "clients": self.num_clients,
            "size_min": self.size_min,
            "size_mean": self.size_mean,
            "size_max": self.size_max,
            "size_std": self.size_std,
            "mean_labels_per_client": self.mean_labels_per_client,
            "label_skew_tv": self.label_skew,
        }

    def to_table_rows(self) -> list[dict[str, Any]]:
        """One plain dict per client (client, samples, labels, tv, histogram) for a table."""
        tv = self.client_tv
        return [
            {
                "client": i,
                "samples": int(self.sizes[i]),
                "labels": int(self.labels_per_client[i]),
                "tv": None if np.isnan(tv[i]) else round(float(tv[i]), 4),
                "histogram": [int(c) for c in self.label_counts[i]],
            }
            for i in range(self.num_clients)
        ]


def describe(partition: list[np.ndarray], labels: np.ndarray, num_classes: int) -> PartitionStats:
    """Count samples and labels per client of ``partition`` (index arrays into ``labels``)."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    if not partition:
        raise ValueError("describe needs at least one client")
    counts = np.zeros((len(partition), num_classes), np.int64)
    for i, idx in enumerate(partition):
        counts[i] = np.bincount(labels[np.asarray(idx, dtype=np.int64)], minlength=num_classes)
    return PartitionStats(sizes=counts.sum(axis=1), label_counts=counts)
