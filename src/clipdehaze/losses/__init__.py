"""Training losses, all called as ``loss(output, target, hazy)``."""

from clipdehaze.losses.pixel import CharbonnierLoss, L1Loss, WeightedSumLoss

__all__ = ["CharbonnierLoss", "L1Loss", "WeightedSumLoss"]
