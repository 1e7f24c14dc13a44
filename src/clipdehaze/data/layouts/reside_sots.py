"""RESIDE SOTS (Synthetic Objective Testing Set), as downloaded: ``indoor/`` and ``outdoor/``, each with ``hazy/`` and
``gt/`` (indoor: 500 hazy ``1400_1.png`` ... over 50 GT ``1400.png`` ...; outdoor: 500 hazy ``0001_0.8_0.2.jpg`` ...
and 500 GT ``0001.png`` ...). ``sots_indoor`` / ``sots_outdoor`` take one of the two (or the folder itself when it
holds ``hazy/`` + ``gt/``) and make ``<out>/test/{hazy,GT}/`` in RESIDE's native naming: with ITS (resp. OTS)
prepared into the same ``<out>``, that is DehazeFormer's RESIDE-IN (RESIDE-OUT) which ``data=its`` / ``data=ots``
read; ``data=sots_indoor`` / ``data=sots_outdoor`` read its ``test/`` alone.

Source: the RESIDE-Standard page; DEA-Net's ``dataset/README.md`` (indoor ``1400_1.png`` ... ``1400_10.png`` with
``1400.png``); PaddleVideo's RESIDE docs (``SOTS/{indoor,outdoor}/{hazy,clear}``, so ``clear/`` is accepted too).
"""

from __future__ import annotations

from pathlib import Path

from clipdehaze.data.layouts.registry import Layout, Link, register_layout, subfolder
from clipdehaze.data.layouts.reside_its import HAZY_NAMES, hazy_and_clear

_SOURCE = "RESIDE-Standard; DEA-Net dataset/README.md; PaddleVideo docs/zh-CN/dataset/RESIDE.md"


@register_layout("sots_outdoor", title="RESIDE SOTS-outdoor (500 test pairs)", data_config="sots_outdoor",
                 folder="RESIDE-OUT", expected="outdoor/{hazy,gt}/ (0001_0.8_0.2.jpg -> 0001.png), or the outdoor "
                 "folder itself", source=_SOURCE, part="outdoor")
@register_layout("sots_indoor", title="RESIDE SOTS-indoor (500 test pairs)", data_config="sots_indoor",
                 folder="RESIDE-IN", expected="indoor/{hazy,gt}/ (1400_1.png -> 1400.png), or the indoor folder "
                 "itself", source=_SOURCE, part="indoor")
class ResideSOTS(Layout):
    splits = ("test",)

    def plan(self, root: Path, **options) -> list[Link]:
        part = subfolder(root, [self.settings["part"]])
        base = part if part is not None and subfolder(root, HAZY_NAMES) is None else root
        return hazy_and_clear(base, "test")
