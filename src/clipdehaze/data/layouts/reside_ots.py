"""RESIDE OTS (Outdoor Training Set), as downloaded: ``hazy/`` (``<id>_<A>_<beta>.jpg``, e.g. ``0005_0.8_0.04.jpg``;
the download splits them into part folders ``hazy/part1/`` ... ``part4/``, read at any depth) and ``clear/``
(``<id>.jpg``). Becomes ``<out>/train/{hazy,GT}/`` in RESIDE's native naming (paired by the ``reside`` naming);
SOTS-outdoor (``prepare sots_outdoor``) adds ``<out>/test/``, together what ``data=ots`` reads.

Source: the RESIDE-Standard page and PaddleVideo's ``docs/zh-CN/dataset/RESIDE.md`` (``OTS/{hazy,clear}/*.jpg``).
Assumed: the part folders' names do not matter (every image below ``hazy/`` is taken; two with one name are an
error) and ``haze/`` / ``gt/`` spellings are accepted as for ITS.
"""

from __future__ import annotations

from pathlib import Path

from clipdehaze.data.layouts.registry import Layout, Link, register_layout
from clipdehaze.data.layouts.reside_its import hazy_and_clear


@register_layout("ots", title="RESIDE OTS (outdoor training set)", data_config="ots", folder="RESIDE-OUT",
                 expected="hazy/ (0005_0.8_0.04.jpg ..., possibly in part1/ ... part4/) + clear/ (0005.jpg ...)",
                 source="RESIDE-Standard; PaddleVideo docs/zh-CN/dataset/RESIDE.md")
class ResideOTS(Layout):
    splits = ("train",)

    def plan(self, root: Path, **options) -> list[Link]:
        return hazy_and_clear(root, "train")
