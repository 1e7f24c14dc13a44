"""The suite reads and writes nothing outside its temporary directories and the checkout's ignored folders
(tests/isolation.py): a representative part of it, run with HOME and every cache variable pointing at fresh
folders, leaves those folders as they were."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import isolation

#: Touches what writes to HOME or a cache when unconfined: torch + Lightning + Hydra training with the tiny CLIP and
#: the compiled CPU scan, the generated default dataset, a console script through the command server with the wandb
#: and CSV loggers, matplotlib plots, Triton's interpreter.
SUBSET = [
    "tests/test_pipeline.py::test_fast_dev_run_every_test_variant[cliphaze_test]",
    "tests/test_sweeps_wandb.py::test_wandb_offline_logs_scalars_images_config_and_tables",
    "tests/test_synth.py::test_default_allweather_dataset_and_datamodule",
    "tests/test_table.py::test_mean_std_ci_over_seeds_and_published_matching",
    "tests/test_triton_scan.py::test_forward_and_every_gradient_match_the_torch_scan[bc=variable-n=1-True]",
]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.slow
def test_the_suite_leaves_a_fresh_home_and_every_cache_untouched(tmp_path):
    outside = tmp_path / "outside"
    env = {k: v for k, v in os.environ.items()
           if k not in ("CLIPDEHAZE_TEST_ROOT", "CLIPDEHAZE_CACHE") and not k.startswith("PYTEST_")}
    env.update(isolation.cache_environ(outside / "home", outside / "clipdehaze-cache"))
    (outside / "clipdehaze-cache").mkdir()
    for key in isolation.cache_environ(outside / "home", outside / "clipdehaze-cache"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    before = _files(outside)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
                          f"--basetemp={tmp_path / 'basetemp'}", *SUBSET], cwd=isolation.REPO, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-3000:]
    assert f"{len(SUBSET)} passed" in out.stdout, out.stdout[-2000:]
    assert _files(outside) == before, sorted(set(_files(outside)) - set(before))


def test_the_session_points_home_and_every_cache_into_its_own_folder():
    root = Path(os.environ["CLIPDEHAZE_TEST_ROOT"])
    for key, value in isolation.cache_environ(Path("/h"), Path("/c")).items():
        where = Path(os.environ[key])
        assert root in where.parents or where == isolation.PERSISTENT / "torchinductor", (key, where)
    assert Path.home() == Path(os.environ["HOME"]) and root in Path.home().parents


def test_a_missing_tool_skips_unless_clipdehaze_require_lists_it(monkeypatch):
    from conftest import require_or_skip, required

    monkeypatch.delenv("CLIPDEHAZE_REQUIRE", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no chromium here"):
        require_or_skip("chromium", "no chromium here")
    monkeypatch.setenv("CLIPDEHAZE_REQUIRE", "pdflatex, chromium")
    with pytest.raises(pytest.fail.Exception, match=r"CLIPDEHAZE_REQUIRE lists chromium \(headless Chromium .*\), "
                                                    r"but it is missing: no chromium here"):
        require_or_skip("chromium", "no chromium here")
    with pytest.raises(pytest.skip.Exception):
        require_or_skip("shared", "no shared/ here")   # not listed: still a skip
    with pytest.raises(ValueError, match="unknown requirement 'chromum'"):
        require_or_skip("chromum", "typo in a test")
    monkeypatch.setenv("CLIPDEHAZE_REQUIRE", "chromium,pdflatx")
    with pytest.raises(pytest.UsageError, match=r"CLIPDEHAZE_REQUIRE names \['pdflatx'\]"):
        required()


#: Words of a skip reason that mean a tool CLIPDEHAZE_REQUIRE can list (conftest.REQUIREMENTS) is missing.
_REQUIRED_TOOL_WORDS = ("chromium", "pdflatex", "shared/", "compiler", "g++", "triton", "calibration")


def _bare_tool_skips(text: str) -> list[str]:
    """``pytest.skip(...)`` calls (with the line after, for a wrapped reason) that name a listed tool: they would
    skip silently in CI, where require_or_skip fails instead."""
    lines = text.splitlines()
    return [line.strip() for i, line in enumerate(lines) if line.lstrip().startswith("pytest.skip(")
            and any(w in (line + " ".join(lines[i + 1:i + 2])).lower() for w in _REQUIRED_TOOL_WORDS)]


def test_a_missing_listed_tool_is_never_a_bare_skip():
    found = {path.name: hits for path in sorted(Path(__file__).parent.glob("*.py")) if path.name != "conftest.py"
             and (hits := _bare_tool_skips(path.read_text()))}
    assert not found, f"use conftest.require_or_skip(<requirement>, reason) for these skips: {found}"
    # the check finds what it looks for
    assert _bare_tool_skips('    if binary is None:\n        pytest.skip("no headless Chromium on this machine")\n')
    assert _bare_tool_skips('        pytest.skip(f"{path} not found: the recorded upstream\n'
                            '                    trajectory is part of the project\'s shared/ folder")\n')
    assert not _bare_tool_skips('        pytest.skip("make is not installed")\n')
