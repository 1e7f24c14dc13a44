"""Dataset layouts: how file names pair, and how each official download maps onto ``<out>/{train,test}/{hazy,GT}/``.

One file per layout (BasicSR's ``DATASET_REGISTRY`` idea, without its import-time directory scan): each module
below registers its namings and layouts in :mod:`clipdehaze.data.layouts.registry` when imported, and this package
imports them by name. Adding a layout is one file plus one line here (README, "Adding a dataset layout").
"""

from clipdehaze.data.layouts import (  # noqa: F401  (imported to register)
    dehazeformer,
    haze4k,
    ntire,
    outdoor_rain,
    reside_its,
    reside_ots,
    reside_sots,
)
from clipdehaze.data.layouts.registry import (
    INPUT_DIR,
    TARGET_DIR,
    Layout,
    LayoutMismatch,
    Link,
    Naming,
    describe_folder,
    get_layout,
    layouts,
    namings,
    register_layout,
    register_naming,
)

__all__ = ["INPUT_DIR", "TARGET_DIR", "Layout", "LayoutMismatch", "Link", "Naming", "describe_folder", "get_layout",
           "layouts", "namings", "register_layout", "register_naming"]
