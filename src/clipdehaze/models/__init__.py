"""Generators (by name, from their variant files), their contract, and the frozen CLIP prior."""

from clipdehaze.models.contract import Generator, GeneratorBase, clip_inputs_of
from clipdehaze.models.layers import upstream_graph
from clipdehaze.models.registry import register_generator
from clipdehaze.models.variants import create_generator, list_generators

__all__ = ["Generator", "GeneratorBase", "clip_inputs_of", "create_generator", "list_generators",
           "register_generator", "upstream_graph"]
