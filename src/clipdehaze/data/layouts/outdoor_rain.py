"""Outdoor-Rain (Li et al., "Heavy Rain Image Restoration: Integrating Physics Model and Conditional Adversarial
Learning", CVPR 2019) Test1, native naming: ``im_0001_s80_a04.png`` (rain streak and accumulation parameters) pairs
with ``im_0001.png``. A naming only: ``data=outdoor_rain`` reads TransWeather's lists, and a folder in the native
naming is read as it is (``data.test_list=null data.root=<dir> ...``, see ``conf/data/outdoor_rain.yaml``).

Source: the Test1 file names as TransWeather's ``data/test/test1`` lists and the CVPR 2019 release carry them.
"""

from __future__ import annotations

import re

from clipdehaze.data.layouts.registry import register_naming

# The id keeps its underscore ("im_0001"), so the RESIDE rule (text before the first "_") cannot find it.
_RAIN_PARAMS = re.compile(r"_s\d+_a\d+$")


@register_naming("outdoor_rain", order=20, example="in/im_0001_s80_a04.png -> gt/im_0001.png (Outdoor-Rain)")
def outdoor_rain(stem: str) -> str:
    return _RAIN_PARAMS.sub("", stem)
