"""The NTIRE dehazing challenge sets, as downloaded: Dense-HAZE (NTIRE 2019, Ancuti et al., ICIP 2019), NH-HAZE
(NTIRE 2020, CVPRW 2020) and O-HAZE (NTIRE 2018, CVPRW 2018). Each pairs ``<NN>_hazy.<ext>`` with ``<NN>_GT.<ext>``
(O-HAZE: ``<NN>_outdoor_hazy.jpg`` / ``<NN>_outdoor_GT.jpg``), either in one folder (NH-HAZE's archive) or in
``hazy/`` + ``GT/`` (Dense-HAZE's, O-HAZE's). Becomes ``<out>/{train,test}/{hazy,GT}/`` with the native names (paired
by the ``ntire`` naming), split by image number:

* Dense-HAZE: train 01-45, test 51-55 (the challenge's train and test images; its validation images 46-50 are
  left out, as ``conf/data/dense_haze.yaml`` has always said);
* NH-HAZE: train 01-50, test 51-55 (the challenge's train and validation images train);
* O-HAZE: train 01-40, test 41-45.

Papers differ here, so ``--test-ids`` / ``--train-ids`` (``51-55``, ``1-45,48``) choose another split; images in
neither are left out and the summary lists them.

Source: the challenge pages (https://data.vision.ee.ethz.ch/cvl/ntire19/dense-haze/, .../ntire20/nh-haze/,
.../ntire18/o-haze/: 55, 55 and 45 pairs); the NTIRE 2019 challenge report (55 train/validation/test images);
the ``<NN>_hazy`` / ``<NN>_GT`` names as loaders of these sets read them (e.g. liuh127/NTIRE-2021-Dehazing-Two-branch).

Also registers the ``ntire`` naming: ``<id>_<tag>`` names with a digit-free tag pair by id (``01_hazy`` with
``01_GT``; also RainDrop's ``1_rain`` / ``1_clean``), provided the id names exactly one target.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from clipdehaze.data.layouts.registry import (
    INPUT_DIR,
    TARGET_DIR,
    Layout,
    LayoutMismatch,
    Link,
    image_id,
    images_below,
    register_layout,
    register_naming,
    subfolder,
)

# A tag after the image id: letters and underscores only ("hazy", "GT", "outdoor_hazy"). Digits are excluded so that
# RESIDE's "0001_0.8_0.2" or a plain "im_002" never pair by their prefix with some other image's file.
_TAG = re.compile(r"[^\W\d]+(?:_[^\W\d]+)*")


def tagged_id(stem: str) -> str | None:
    head, sep, tail = stem.partition("_")
    return head if sep and _TAG.fullmatch(tail) else None


register_naming("ntire", order=40, target_key=tagged_id,
                example="hazy/01_hazy.png -> GT/01_GT.png (NTIRE: Dense-HAZE, NH-HAZE, O-HAZE; RainDrop)")(tagged_id)

_HAZY_TAG = re.compile(r"_(?:outdoor_|indoor_)?hazy$", re.I)
_GT_TAG = re.compile(r"_(?:outdoor_|indoor_)?(?:gt|clear)$", re.I)


def parse_ids(text: str) -> set[int]:
    """``"51-55"`` / ``"1-45,48"`` -> the image numbers."""
    ids: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"image numbers {text!r}: write ranges and numbers like 51-55 or 1-45,48")
        ids.update(range(int(lo), int(hi if sep else lo) + 1))
    return ids


_EXPECTED = "NN_hazy.png + NN_GT.png in one folder, or hazy/ + GT/ holding them"


@register_layout("o_haze", title="O-HAZE (NTIRE 2018, 45 outdoor pairs)", data_config="o_haze", folder="O-HAZE",
                 expected=_EXPECTED.replace("NN_", "NN_outdoor_").replace(".png", ".jpg"),
                 source="NTIRE 2018 O-HAZE page; conf/data/o_haze.yaml's split", options=("test_ids", "train_ids"),
                 train="1-40", test="41-45")
@register_layout("nh_haze", title="NH-HAZE (NTIRE 2020, 55 non-homogeneous pairs)", data_config="nh_haze",
                 folder="NH-HAZE", expected=_EXPECTED, source="NTIRE 2020 NH-HAZE page; conf/data/nh_haze.yaml's split",
                 options=("test_ids", "train_ids"), train="1-50", test="51-55")
@register_layout("dense_haze", title="Dense-HAZE (NTIRE 2019, 55 dense-haze pairs)", data_config="dense_haze",
                 folder="Dense-HAZE", expected=_EXPECTED, source="NTIRE 2019 Dense-HAZE page and challenge report",
                 options=("test_ids", "train_ids"), train="1-45", test="51-55")
class NTIRE(Layout):
    def plan(self, root: Path, test_ids: str | None = None, train_ids: str | None = None, **options) -> list[Link]:
        hazy_dir, gt_dir = subfolder(root, ["hazy"]), subfolder(root, ["GT", "clear"])
        if (hazy_dir is None) != (gt_dir is None):
            raise LayoutMismatch(f"{root} has {'GT/' if hazy_dir is None else 'hazy/'} but no "
                                 f"{'hazy/' if hazy_dir is None else 'GT/'}")
        if hazy_dir is not None:
            hazy, gt = images_below(hazy_dir), images_below(gt_dir)
        else:
            files = [p for p in images_below(root) if p.parent == root]
            hazy = [p for p in files if _HAZY_TAG.search(p.stem)]
            gt = [p for p in files if _GT_TAG.search(p.stem)]
        if not hazy or not gt:
            raise LayoutMismatch(f"no <NN>_hazy / <NN>_GT images in {root}")
        test = parse_ids(test_ids or self.settings["test"])
        train = parse_ids(train_ids or self.settings["train"])
        if both := sorted(test & train):
            raise ValueError(f"image numbers {both} are both in the train and the test ids; a test image must not "
                             "be trained on")
        links = []
        for files, out in ((hazy, INPUT_DIR), (gt, TARGET_DIR)):
            for p in files:
                n = image_id(p)
                split = "test" if n in test else "train" if n in train else None
                if split is not None:
                    links.append(Link(p, PurePosixPath(split, out, p.name)))
        return links

    def left_out(self, root: Path, links: list[Link]) -> list[Path]:
        used = {link.source for link in links}
        hazy_dir = subfolder(root, ["hazy"])
        pool = images_below(hazy_dir) if hazy_dir is not None else [
            p for p in images_below(root) if p.parent == root and _HAZY_TAG.search(p.stem)]
        return [p for p in pool if p not in used]
