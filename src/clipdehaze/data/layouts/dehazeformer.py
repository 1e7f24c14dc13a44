"""DehazeFormer's rearranged archives, already in our layout: ``{train,test}/{hazy,GT}/`` with identical file names.

Source: IDKiro/DehazeFormer's README ("In order to align the folder structure of each dataset, we rearrange the
original dataset": ``data/<dataset>/{train,test}/{GT,hazy}/``, "hazy ... corresponds to the former") and its
``datasets/loader.py`` (a hazy image and its GT share the file name). Its archives are RESIDE-IN (ITS + SOTS-indoor),
RESIDE-OUT (OTS + SOTS-outdoor), RESIDE-6K and RSHaze (RS-Haze, gamma-corrected RGB; the only paired release of
RS-Haze, so ``rs_haze`` is this layout too). The data configs read these folders as they are (no ``prepare``
needed); ``prepare`` links them into another place, checking that every hazy image has its GT.

Also registers the ``identical`` naming: a hazy image and its GT share the stem (extensions may differ).
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


@register_naming("identical", order=10, example="hazy/0001.png -> GT/0001.png (DehazeFormer's layout)")
def identical(stem: str) -> str:
    return stem


_EXPECTED = "train/ and/or test/, each with hazy/ + GT/ holding images of identical names"
_SOURCE = "IDKiro/DehazeFormer README (data/<dataset>/{train,test}/{GT,hazy}) and datasets/loader.py"


@register_layout("rs_haze", title="RS-Haze (DehazeFormer's RSHaze archive, gamma-corrected RGB)", data_config="rs_haze",
                 folder="RSHaze", expected=_EXPECTED, source=_SOURCE)
@register_layout("reside6k", title="RESIDE-6K (DehazeFormer's archive)", data_config="reside6k", folder="RESIDE-6K",
                 expected=_EXPECTED, source=_SOURCE)
@register_layout("dehazeformer", title="any DehazeFormer archive (RESIDE-IN, RESIDE-OUT, RESIDE-6K, RSHaze)",
                 data_config="paired", folder=None, expected=_EXPECTED, source=_SOURCE)
class DehazeFormerArchive(Layout):
    ours = True

    def plan(self, root: Path, **options) -> list[Link]:
        links = []
        for split in self.splits:
            base = root / split
            if not base.is_dir():
                continue
            hazy, gt = subfolder(base, [INPUT_DIR]), subfolder(base, [TARGET_DIR])
            if hazy is None or gt is None:
                raise LayoutMismatch(f"{base} lacks {'hazy/' if hazy is None else 'GT/'}")
            for folder, out in ((hazy, INPUT_DIR), (gt, TARGET_DIR)):
                links += [Link(p, PurePosixPath(split, out, p.name)) for p in images_below(folder)]
        if not links:
            raise LayoutMismatch(f"no train/ or test/ folder with hazy/ + GT/ in {root}")
        return links
