"""Data: image I/O, paired datasets, synthetic degradations and the Lightning data modules."""

from clipdehaze.data.datamodule import (
    EpochSeededSampler,
    PairedDataModule,
    SyntheticHazeDataModule,
    SyntheticWeatherDataModule,
    seed_worker,
)
from clipdehaze.data.datasets import ListPairedDataset, PairedImageDataset, match_pairs
from clipdehaze.data.io import IMAGE_EXTENSIONS, ImageReadError, load_image, save_image
from clipdehaze.data.synth import HazeConfig, add_haze, ensure_default_dataset, synthesize_dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "HazeConfig",
    "ImageReadError",
    "ListPairedDataset",
    "PairedDataModule",
    "PairedImageDataset",
    "SyntheticHazeDataModule",
    "SyntheticWeatherDataModule",
    "EpochSeededSampler",
    "add_haze",
    "ensure_default_dataset",
    "load_image",
    "match_pairs",
    "save_image",
    "seed_worker",
    "synthesize_dataset",
]
