"""Load a finished run's model and use it: ``python examples/load_model.py RUN_DIR``."""

from __future__ import annotations

import sys

import torch
from sklearn.datasets import load_digits

import fedkit


def main(run_dir: str) -> float:
    model = fedkit.load_model(run_dir)  # a torch.nn.Module holding the final parameters
    x, y = load_digits(return_X_y=True)
    with torch.no_grad():
        pred = model(torch.tensor(x / 16.0, dtype=torch.float32)).argmax(1).numpy()
    acc = float((pred == y).mean())
    print(f"{run_dir}: accuracy on all 1797 digits {acc:.3f}")
    return acc


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/custom")
