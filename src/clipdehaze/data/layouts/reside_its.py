"""RESIDE ITS (Indoor Training Set, Li et al., "Benchmarking Single Image Dehazing and Beyond", TIP 2019), as
downloaded: ``hazy/`` (13,990 images ``<id>_<k>_<beta>.png``, e.g. ``1_1_0.90179.png``) and ``clear/`` (1,399
``<id>.png``), beside ``trans/`` (transmission maps, not used). Becomes ``<out>/train/{hazy,GT}/`` in RESIDE's native
naming; SOTS-indoor (``prepare sots_indoor``) adds ``<out>/test/``, which together are what ``data=its`` reads.

Source: the RESIDE-Standard page (https://sites.google.com/view/reside-dehaze-datasets/reside-standard) and the
folder tree PaddleVideo documents for it (``docs/zh-CN/dataset/RESIDE.md``: ``ITS/{hazy,clear}/*.png``); the
``<id>_<k>_<beta>`` names as DEA-Net's ``dataset/README.md`` and RESIDE-loaders (``split('_')[0]``) show them.
A hazy folder spelled ``haze/`` and a clear folder spelled ``gt/``/``GT/`` are accepted too.

Also registers the ``reside`` naming, which ITS introduced and OTS, SOTS and Haze4K share: the hazy stem's part
before the first ``_`` is the clear image's stem.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from clipdehaze.data.layouts.registry import (
    INPUT_DIR,
    TARGET_DIR,
    Layout,
    LayoutMismatch,
    Link,
    images_below,
    register_layout,
    register_naming,
    subfolder,
)

HAZY_NAMES = ("hazy", "haze")
CLEAR_NAMES = ("clear", "gt")


@register_naming("reside", order=30, example="hazy/0001_0.8_0.2.jpg -> GT/0001.png (RESIDE, Haze4K)")
def reside(stem: str) -> str:
    return stem.split("_", 1)[0]


def hazy_and_clear(base: Path, split: str) -> list[Link]:
    """``base/{hazy,clear}/`` (images at any depth: OTS keeps its hazy images in part folders) as ``split``."""
    hazy, clear = subfolder(base, HAZY_NAMES), subfolder(base, CLEAR_NAMES)
    if hazy is None or clear is None:
        raise LayoutMismatch(f"{base} has no {'hazy/' if hazy is None else 'clear/'} folder")
    links = []
    for folder, out in ((hazy, INPUT_DIR), (clear, TARGET_DIR)):
        links += [Link(p, PurePosixPath(split, out, p.name)) for p in images_below(folder)]
    return links


@register_layout("its", title="RESIDE ITS (indoor training set)", data_config="its", folder="RESIDE-IN",
                 expected="hazy/ (1_1_0.90179.png ...) + clear/ (1.png ...), trans/ ignored",
                 source="RESIDE-Standard; PaddleVideo docs/zh-CN/dataset/RESIDE.md; DEA-Net dataset/README.md")
class ResideITS(Layout):
    splits = ("train",)

    def plan(self, root: Path, **options) -> list[Link]:
        return hazy_and_clear(root, "train")
