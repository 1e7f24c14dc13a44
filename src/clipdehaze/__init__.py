"""clipdehaze: CLIP-guided image restoration experiments with Lightning + Hydra."""

__version__ = "0.1.0"
