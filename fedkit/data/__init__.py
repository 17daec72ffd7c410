"""Datasets (digits, FedProx Synthetic, the user's npz/idx files) and partitioners.

Numpy only, so devices and the server can import it without torch.
"""

from fedkit.data.datasets import DATASETS, Dataset, load_dataset, register_dataset
from fedkit.data.partition import PARTITIONERS, partition, register_partitioner
from fedkit.data.stats import PartitionStats, describe

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "Dataset",
    "PartitionStats",
    "describe",
    "load_dataset",
    "partition",
    "register_dataset",
    "register_partitioner",
]
