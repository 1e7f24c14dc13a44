"""Training losses, all called as ``loss(output, target, hazy)``."""

from clipdehaze.losses.contrastive import ContrastiveRegularization, L1WithCR
from clipdehaze.losses.pixel import CharbonnierLoss, L1Loss, WeightedSumLoss
from clipdehaze.losses.sar import SARWeatherLoss

__all__ = ["CharbonnierLoss", "ContrastiveRegularization", "L1Loss", "L1WithCR", "SARWeatherLoss", "WeightedSumLoss"]
