"""The run model shared by ``clipdehaze-table`` and ``clipdehaze-compare``: which config keys define what was scored
(:mod:`.keys`), runs read from ``metrics.json`` (:mod:`.collect`), rows of runs that scored one thing
(:mod:`.identity`), their per-image results (:mod:`.per_image`) and the published numbers beside them
(:mod:`.published`). Nothing is imported here, so :mod:`.keys` stays a leaf that any module can read."""
