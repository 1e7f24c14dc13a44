"""Generators (by registered name) and the frozen CLIP prior."""

from clipdehaze.models.layers import upstream_graph
from clipdehaze.models.registry import clip_inputs_of, create_generator, list_generators, register_generator

__all__ = ["clip_inputs_of", "create_generator", "list_generators", "register_generator", "upstream_graph"]
