"""Synthetic degraded/clean pairs, and the small default datasets built from scikit-image's photos.

One module per job: the physics of each degradation kind (:mod:`~clipdehaze.data.synth.haze`,
:mod:`~.rain`, :mod:`~.snow`, :mod:`~.raindrop`, :mod:`~.allweather`, with the pieces they share in
:mod:`~.primitives`), the table of kinds (:mod:`~.kinds`), the dataset writer with its fingerprint
(:mod:`~.writer`) and the cached default datasets (:mod:`~.cache`).

Adverse weather (the All-Weather setting of TransWeather / WeatherDiffusion) is synthesised in image space,
each kind at seeded random strengths (ranges in its config class); haze follows the atmospheric scattering
model used to synthesise RESIDE. A new kind is one module (function + config class) plus one entry in
:data:`DEGRADATIONS`.
"""

from clipdehaze.data.synth.allweather import WEATHER_KINDS, AllWeatherConfig, add_allweather
from clipdehaze.data.synth.cache import (
    DEFAULT_RECIPES,
    DEFAULT_SPLITS,
    default_cache_dir,
    default_dataset_dir,
    default_sources,
    ensure_default_dataset,
)
from clipdehaze.data.synth.haze import DEPTH_PRIORS, HazeConfig, add_haze, apply_scattering, density_field, depth_map
from clipdehaze.data.synth.kinds import DEGRADATIONS, Degradation
from clipdehaze.data.synth.rain import RainConfig, add_rain
from clipdehaze.data.synth.raindrop import RaindropConfig, add_raindrop
from clipdehaze.data.synth.snow import SnowConfig, add_snow
from clipdehaze.data.synth.writer import (
    SYNTH_VERSION,
    RecipeError,
    SplitRecipe,
    is_dataset_complete,
    synthesize_dataset,
)

__all__ = [
    "DEFAULT_RECIPES",
    "DEFAULT_SPLITS",
    "DEGRADATIONS",
    "DEPTH_PRIORS",
    "SYNTH_VERSION",
    "WEATHER_KINDS",
    "AllWeatherConfig",
    "Degradation",
    "HazeConfig",
    "RainConfig",
    "RecipeError",
    "RaindropConfig",
    "SnowConfig",
    "SplitRecipe",
    "add_allweather",
    "add_haze",
    "add_rain",
    "add_raindrop",
    "add_snow",
    "apply_scattering",
    "default_cache_dir",
    "default_dataset_dir",
    "default_sources",
    "density_field",
    "depth_map",
    "ensure_default_dataset",
    "is_dataset_complete",
    "synthesize_dataset",
]
