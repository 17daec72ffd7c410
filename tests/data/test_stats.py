"""describe(): counts, summaries and the TV label-skew measure on hand-made partitions."""

from __future__ import annotations

import numpy as np
import pytest

from fedkit.data import describe


def test_counts_and_summary() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    stats = describe([np.array([0, 1, 2]), np.array([3, 4, 5])], labels, num_classes=4)
    assert stats.label_counts.tolist() == [[2, 1, 0, 0], [0, 1, 2, 0]]
    assert stats.sizes.tolist() == [3, 3]
    assert stats.labels_per_client.tolist() == [2, 2]
    s = stats.summary()
    assert (s["size_min"], s["size_max"], s["size_mean"], s["size_std"]) == (3, 3, 3.0, 0.0)
    # global (1/3,1/3,1/3,0); client 0 (2/3,1/3,0,0): TV = 1/2 (1/3 + 0 + 1/3) = 1/3
    assert stats.label_skew == pytest.approx(1 / 3)


def test_iid_is_zero_skew_single_label_is_max() -> None:
    labels = np.tile(np.arange(4), 6)
    halves = [np.arange(12), np.arange(12, 24)]
    assert describe(halves, labels, 4).label_skew == pytest.approx(0.0)
    pure = [np.flatnonzero(labels == c) for c in range(4)]
    assert describe(pure, labels, 4).label_skew == pytest.approx(0.75)


def test_empty_client_and_table_rows() -> None:
    labels = np.array([0, 1, 1])
    stats = describe([np.array([0, 1, 2]), np.array([], dtype=np.int64)], labels, 2)
    rows = stats.to_table_rows()
    assert rows[0] == {"client": 0, "samples": 3, "labels": 2, "tv": 0.0, "histogram": [1, 2]}
    assert rows[1]["samples"] == 0 and rows[1]["tv"] is None
    assert stats.label_skew == 0.0


def test_rejects_out_of_range_labels() -> None:
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        describe([np.array([0])], np.array([2]), 2)
