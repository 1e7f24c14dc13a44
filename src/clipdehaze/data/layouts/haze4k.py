"""Haze4K (Liu et al., "From Synthetic to Real: Image Dehazing Collaborating with Unlabeled Real Data", ACM MM 2021;
3,000 train / 1,000 test synthetic pairs), as downloaded: ``train/`` and ``test/``, each with the hazy images and
their ground truths in two folders. Becomes ``<out>/{train,test}/{hazy,GT}/`` in its native naming, which is
RESIDE's (hazy ``<id>_<A>_<beta>.png``, e.g. ``1_0.89_1.56.png``, GT ``<id>.png``; paired by the ``reside`` naming).

Source: the authors' loader (liuye123321/DMT-Net ``data/new_data_test.py``: hazy in ``haze/``, GT in ``gt/``, the GT
named ``basename.split('_')[0] + '.png'``; a ``trans/`` folder of transmission maps, not used here) and DEA-Net's
``dataset/README.md`` (``HAZE4K/{train,test}/{hazy,clear}/``, ``1_0.89_1.56.png`` / ``1.png``). Assumed: the
released archive (a Baidu Pan link) names the folders ``IN/`` (hazy) and ``GT/`` (ground truth), as users report;
no public source we could read shows the archive itself, so ``IN``/``haze``/``hazy`` and ``GT``/``gt``/``clear``
are all accepted.
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
    subfolder,
)

HAZY_NAMES = ("IN", "haze", "hazy")
GT_NAMES = ("GT", "gt", "clear")


@register_layout("haze4k", title="Haze4K", data_config="haze4k", folder="Haze4K",
                 expected="train/ and test/, each with IN/ (or haze/, hazy/: 1_0.89_1.56.png ...) + GT/ (or gt/, "
                          "clear/: 1.png ...)",
                 source="liuye123321/DMT-Net data/new_data_test.py; DEA-Net dataset/README.md; archive folder "
                        "names IN/GT assumed")
class Haze4K(Layout):
    def plan(self, root: Path, **options) -> list[Link]:
        links = []
        for split in self.splits:
            base = subfolder(root, [split])
            if base is None:
                raise LayoutMismatch(f"{root} has no {split}/ folder")
            hazy, gt = subfolder(base, HAZY_NAMES), subfolder(base, GT_NAMES)
            if hazy is None or gt is None:
                raise LayoutMismatch(f"{base} has no {'IN/ (haze/, hazy/)' if hazy is None else 'GT/ (gt/, clear/)'} "
                                     "folder")
            for folder, out in ((hazy, INPUT_DIR), (gt, TARGET_DIR)):
                links += [Link(p, PurePosixPath(split, out, p.name)) for p in images_below(folder)]
        return links
