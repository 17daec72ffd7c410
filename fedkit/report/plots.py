"""Plots: accuracy and loss per round for one run; accuracy against rounds, bytes and simulated
time across runs (simulated time where the scenario has devices)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Rows = Sequence[Mapping[str, Any]]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(rows: Rows, key: str) -> tuple[list[float], list[float]]:
    pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _timed(rows: Rows) -> bool:
    return any((r.get("sim_time_s") or 0) > 0 for r in rows)


def _sim_time(rows: Rows) -> dict[Any, float]:
    return {r["round"]: float(r.get("sim_time_s") or 0.0) for r in rows}


def curves(rows: Rows, path: str | Path, title: str = "") -> None:
    """Accuracy and loss per round; with a simulated clock also accuracy against its time."""
    plt = _plt()
    timed = _timed(rows)
    fig, axes = plt.subplots(1, 3 if timed else 2, figsize=(15 if timed else 10, 4))
    ax1, ax2 = axes[0], axes[1]
    clock = _sim_time(rows)
    for key, label in (("test_acc", "test (centralized)"), ("fed_acc", "federated")):
        x, y = _series(rows, key)
        if x:
            ax1.plot(x, y, marker=".", label=label)
            if timed:
                axes[2].plot([clock[i] for i in x], y, marker=".", label=label)
    for key, label in (("train_loss", "train"), ("test_loss", "test"), ("fed_loss", "federated")):
        x, y = _series(rows, key)
        if x:
            ax2.plot(x, y, marker=".", label=label)
    ax1.set(xlabel="round", ylabel="accuracy", title="accuracy")
    ax2.set(xlabel="round", ylabel="loss", title="loss")
    for ax in (ax1, ax2):
        ax.xaxis.get_major_locator().set_params(integer=True)
    if timed:
        axes[2].set(xlabel="simulated time (s)", ylabel="accuracy", title="accuracy vs simulated time")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare(runs: Mapping[str, Rows], path: str | Path) -> None:
    """Accuracy against rounds, cumulative bytes (up + down) and, when any run has a simulated
    clock, simulated time, for several runs."""
    plt = _plt()
    timed = any(_timed(rows) for rows in runs.values())
    fig, axes = plt.subplots(1, 3 if timed else 2, figsize=(16 if timed else 11, 4))
    ax1, ax2 = axes[0], axes[1]
    for name, rows in runs.items():
        x, y = _series(rows, "test_acc")
        if not x:
            continue
        ax1.plot(x, y, marker=".", label=name)
        total, cum = 0, {}
        for r in rows:
            total += r.get("bytes_up", 0) + r.get("bytes_down", 0)
            cum[r["round"]] = total
        ax2.plot([cum[i] / 1e6 for i in x], y, marker=".", label=name)
        if timed:
            clock = _sim_time(rows)
            axes[2].plot([clock[i] for i in x], y, marker=".", label=name)
    ax1.set(xlabel="round", ylabel="test accuracy")
    ax1.xaxis.get_major_locator().set_params(integer=True)
    ax2.set(xlabel="cumulative MB (up + down)", ylabel="test accuracy", xscale="log")
    if timed:
        axes[2].set(xlabel="simulated time (s)", ylabel="test accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
