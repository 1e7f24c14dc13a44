"""Every architecture file, imported explicitly so its factories register themselves.

Add one line per new architecture file.
"""

from clipdehaze.models.generators import dcp  # noqa: F401
from clipdehaze.models.generators import identity  # noqa: F401
from clipdehaze.models.generators import dehazeformer  # noqa: F401
from clipdehaze.models.generators import sar_weather  # noqa: F401
from clipdehaze.models.generators import mixdehazenet  # noqa: F401
from clipdehaze.models.generators import cliphaze  # noqa: F401
