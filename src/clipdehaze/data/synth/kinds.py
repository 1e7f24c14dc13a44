"""The degradation kinds a synthetic dataset can have: kind -> function, config class, input and target folder
names. Haze keeps RESIDE/DehazeFormer's ``hazy/`` + ``GT/``; the weather kinds use TransWeather's All-Weather folder
names ``input/`` + ``gt/``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipdehaze.data.synth.allweather import AllWeatherConfig, add_allweather
from clipdehaze.data.synth.haze import HazeConfig, add_haze
from clipdehaze.data.synth.rain import RainConfig, add_rain
from clipdehaze.data.synth.raindrop import RaindropConfig, add_raindrop
from clipdehaze.data.synth.snow import SnowConfig, add_snow


@dataclass(frozen=True)
class Degradation:
    """One synthetic degradation kind: ``apply(clean, rng, config) -> (degraded, params)``."""

    apply: Callable[[np.ndarray, np.random.Generator, Any], tuple[np.ndarray, dict]]
    config_type: type
    input_dir: str  # folder of the degraded images, as in the real datasets of that kind
    target_dir: str  # folder of the clean images


DEGRADATIONS: dict[str, Degradation] = {
    "haze": Degradation(apply=add_haze, config_type=HazeConfig, input_dir="hazy", target_dir="GT"),
    "rain": Degradation(apply=add_rain, config_type=RainConfig, input_dir="input", target_dir="gt"),
    "snow": Degradation(apply=add_snow, config_type=SnowConfig, input_dir="input", target_dir="gt"),
    "raindrop": Degradation(apply=add_raindrop, config_type=RaindropConfig, input_dir="input", target_dir="gt"),
    "allweather": Degradation(apply=add_allweather, config_type=AllWeatherConfig, input_dir="input",
                              target_dir="gt"),
}
