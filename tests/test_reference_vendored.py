"""The vendored manifests under tests/reference/ are exact copies of shared/reference/manifests/."""

from __future__ import annotations

import math
import re

from conftest import VENDORED_MANIFESTS, read_manifest


def test_vendored_manifests_parse_and_count_params():
    files = sorted(VENDORED_MANIFESTS.glob("*.tsv"))
    assert len(files) == 15
    for f in files:
        header = f.read_text().splitlines()[0]
        m = re.match(r"# (\w+): (\d+) parameters, (\d+) state_dict entries", header)
        assert m and m.group(1) == f.stem, (f, header)
        rows = read_manifest(f)
        assert len(rows) == int(m.group(3)), f
        # state_dict also holds buffers (BN statistics, DehazeFormer's relative positions), so numel >= params
        assert sum(math.prod(s) for _, s in rows) >= int(m.group(2)), f


def test_vendored_manifests_match_shared(shared_dir):
    src = shared_dir / "reference" / "manifests"
    names = sorted(p.name for p in src.glob("*.tsv"))
    assert names == sorted(p.name for p in VENDORED_MANIFESTS.glob("*.tsv"))
    for name in names:
        assert (VENDORED_MANIFESTS / name).read_bytes() == (src / name).read_bytes(), name
