"""All-weather: one of haze/rain/snow/raindrop per image (uniformly), so a dataset mixes all four."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipdehaze.data.synth.haze import HazeConfig, add_haze
from clipdehaze.data.synth.rain import RainConfig, add_rain
from clipdehaze.data.synth.raindrop import RaindropConfig, add_raindrop
from clipdehaze.data.synth.snow import SnowConfig, add_snow

#: The kinds an all-weather dataset mixes.
WEATHER_KINDS = ("haze", "rain", "snow", "raindrop")


@dataclass(frozen=True)
class AllWeatherConfig:
    """A mixture: each image gets one kind from ``kinds`` (uniformly), drawn with that kind's config."""

    kinds: tuple[str, ...] = WEATHER_KINDS
    haze: HazeConfig = HazeConfig()
    rain: RainConfig = RainConfig()
    snow: SnowConfig = SnowConfig()
    raindrop: RaindropConfig = RaindropConfig()

    def __post_init__(self):
        unknown = [k for k in self.kinds if k not in WEATHER_KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {WEATHER_KINDS}, got {self.kinds}")


_SINGLE_WEATHER: dict[str, Callable[[np.ndarray, np.random.Generator, Any], tuple[np.ndarray, dict]]] = {
    "haze": add_haze, "rain": add_rain, "snow": add_snow, "raindrop": add_raindrop}


def add_allweather(clean: np.ndarray, rng: np.random.Generator,
                   config: AllWeatherConfig = AllWeatherConfig()) -> tuple[np.ndarray, dict]:
    """One weather kind per image; ``params["weather"]`` names it, the rest are that kind's parameters."""
    kind = config.kinds[int(rng.integers(len(config.kinds)))]
    degraded, params = _SINGLE_WEATHER[kind](clean, rng, getattr(config, kind))
    return degraded, {"weather": kind, **params}
