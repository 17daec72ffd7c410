"""Tiny models run fastest on one thread (restored after each test); a user model for the split tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h + self.fc2(torch.relu(self.fc1(h))))


class Residual(nn.Module):
    """A user model, not a Sequential (traced by torch.fx), with a skip connection inside
    ``block`` (so no cut falls between ``block.fc1`` and ``block.fc2``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.act = nn.ReLU()
        self.block = Block()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.act(self.stem(x))))
