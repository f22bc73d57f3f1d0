"""Datasets: specs, loaders and the seeded members/reference/holdout/attacker split."""

from privsplit.data.dataset import Dataset, LabeledImages
from privsplit.data.spec import DataSpec, default_image_size, load_dataset, loaders, register_loader
from privsplit.data.splits import Part, Split, SplitFractions, make_split

__all__ = [
    "Dataset",
    "LabeledImages",
    "DataSpec",
    "load_dataset",
    "loaders",
    "register_loader",
    "default_image_size",
    "Part",
    "Split",
    "SplitFractions",
    "make_split",
]
