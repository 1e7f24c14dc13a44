"""The frozen CLIP prior: one open_clip model serving every CLIP-conditioned generator.

``FrozenCLIP`` (frozen, never checkpointed) gives text features, zero-shot probabilities, image embeddings,
dense features and zero-shot haze density maps; ``ClipCache`` stores the per-image ones on disk (safetensors,
keyed by image content + prior signature); ``prompts`` holds the prompt sets; ``bench`` times live vs cached.
"""

from clipdehaze.models.clip.cache import ClipCache, read_image
from clipdehaze.models.clip.density import DensityOptions, crop_density, upsample_density
from clipdehaze.models.clip.frozen import (
    CLIP_INPUTS,
    FrozenCLIP,
    MissingWeightsError,
    TextFeatureOptions,
    register_builtin_configs,
)
from clipdehaze.models.clip.prompts import BUILTIN_PROMPT_SETS, PromptSet, load_prompt_set, resolve_prompt_sets

__all__ = [
    "BUILTIN_PROMPT_SETS",
    "CLIP_INPUTS",
    "ClipCache",
    "DensityOptions",
    "FrozenCLIP",
    "MissingWeightsError",
    "PromptSet",
    "TextFeatureOptions",
    "crop_density",
    "load_prompt_set",
    "read_image",
    "register_builtin_configs",
    "resolve_prompt_sets",
    "upsample_density",
]
