"""Datasets: the in-memory representation, D4RL/Minari I/O, the D4RL-recipe generator."""

from ipdrl.data.dataset import Dataset, DatasetError

__all__ = ["Dataset", "DatasetError"]
