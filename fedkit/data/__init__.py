"""Datasets (digits, FedProx Synthetic, the user's npz/idx/text files, stdlib text) and partitioners.

Numpy only, so devices and the server can import it without torch.
"""

from fedkit.data import text as _text  # noqa: F401  (registers the text datasets)
from fedkit.data.datasets import DATASETS, Dataset, TextInfo, load_dataset, register_dataset
from fedkit.data.partition import PARTITIONERS, partition, register_partitioner
from fedkit.data.stats import PartitionStats, describe

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "Dataset",
    "PartitionStats",
    "TextInfo",
    "describe",
    "load_dataset",
    "partition",
    "register_dataset",
    "register_partitioner",
]
