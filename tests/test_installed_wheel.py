"""clipdehaze as a user installs it: the wheel built from this checkout, installed into a folder of its own and run
from a directory outside the checkout, with nothing of the checkout on the path. The configs, the prompt sets and
the papers' published numbers must come from inside the installed package."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: What the wheel is built from (setup.py maps conf/ and experiments/ into the package).
BUILD_INPUTS = ("src", "conf", "experiments", "setup.py", "pyproject.toml", "README.md", "LICENSE")
#: No PYTHONPATH (the tests run with the checkout's src/ on it) and no user site: only the installed copy.
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONNOUSERSITE": "1", "HF_HUB_OFFLINE": "1"}


def _run(cmd: list, cwd: Path, env: dict | None = None) -> str:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out.stdout


def _build_backend_missing() -> str | None:
    """Why the wheel cannot be built offline here (None when it can): the build runs without isolation, so the
    environment needs pyproject.toml's build requirements (the dev extra installs them)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        setuptools = version("setuptools")
    except PackageNotFoundError:
        return "setuptools is not installed"
    if int(setuptools.split(".")[0]) < 77:
        return f"setuptools {setuptools} is older than pyproject.toml's build requirement setuptools>=77"
    return None


@pytest.fixture(scope="module")
def install_dir(tmp_path_factory) -> Path:
    """The wheel of this checkout, installed with ``pip install --target`` (console scripts in its ``bin/``)."""
    if missing := _build_backend_missing():
        pytest.skip(f"cannot build the wheel offline: {missing} (pip install -e '.[dev]' installs it)")
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy: pip builds in the source tree, and a build/ left in the checkout would ship modules that
    # have since been deleted into the next wheel built there.
    source = tmp / "source"
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", tmp / "dist", source], tmp)
    (wheel,) = (tmp / "dist").glob("clipdehaze-*.whl")
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", tmp / "site",
          wheel], tmp)
    return tmp / "site"


@pytest.mark.slow
def test_installed_table_cli_finds_the_published_numbers(install_dir, tmp_path):
    """``clipdehaze-table --paper mixdehazenet`` as installed: the published row beside ours, with the difference,
    and the published rows no run matches listed apart."""
    run = tmp_path / "runs" / "0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({
        "generator": "mixdehazenet_b", "data": "sots_indoor", "seed": 0, "metric_protocol": "DehazeFormer protocol",
        "params": 6_250_000, "metrics": {"test/psnr_sots_indoor": 40.0, "test/ssim_sots_indoor": 0.99},
        "images": 500, "dataset": {"name": "sots_indoor", "images": 500, "available": 500, "subset": False,
                                   "manifest_sha256": "m"},
        "weights": {"origin": "trained"}, "clip": None,
        "config": {"model": {"name": "mixdehazenet_b"}, "seed": 0, "data": {"name": "sots_indoor"}}}))
    _run([install_dir / "bin" / "clipdehaze-table", tmp_path / "runs", "--paper", "mixdehazenet", "--out", "table"],
         tmp_path, env={**ENV, "PYTHONPATH": str(install_dir)})
    md = (tmp_path / "table" / "table.md").read_text()
    ours, unmatched = md.split("## Published rows without a matching run")
    assert "40.90 / 0.9958" in ours and "-0.90" in ours  # MixDehazeNet-B on SOTS-indoor, published vs ours
    assert "MixDehazeNet-L" in unmatched


@pytest.mark.slow
def test_installed_package_reads_its_own_configs_prompts_and_published_numbers(install_dir, tmp_path):
    """``python -I`` (no PYTHONPATH, no cwd on the path) with only the install folder added: the package, its
    configs (an experiment composes), prompt sets and published numbers all resolve inside that folder."""
    script = f"""
import json, sys
sys.path.insert(0, {str(install_dir)!r})
import clipdehaze
from clipdehaze.models.clip.prompts import load_prompt_set, prompts_dir
from clipdehaze.table import EXPERIMENTS, read_published
from clipdehaze.utils.hydra_utils import compose_config, config_path
from clipdehaze.utils.resources import checkout_root

cfg = compose_config("train", ["experiment=mixdehazenet_t_its"], output_dir="out")
print(json.dumps({{
    "package": clipdehaze.__file__, "checkout": checkout_root() and str(checkout_root()), "conf": config_path(),
    "experiments": str(EXPERIMENTS), "prompts": str(prompts_dir()), "weather": list(load_prompt_set("weather").classes),
    "model": cfg.model.name, "data": cfg.data.name, "published": len(read_published("sar_weather")),
}}))
"""
    found = json.loads(_run([sys.executable, "-I", "-c", script], tmp_path).splitlines()[-1])
    package = install_dir / "clipdehaze"
    assert Path(found["package"]).parent == package
    assert found["checkout"] is None and found["conf"] == "pkg://clipdehaze.conf"
    assert Path(found["experiments"]) == package / "experiments"
    assert Path(found["prompts"]) == package / "conf" / "prompts" and "rain" in found["weather"]
    # the recipe experiment comes from experiments/mixdehazenet/recipes.yaml inside the package; it tests on SOTS-indoor
    assert (found["model"], found["data"]) == ("mixdehazenet_t", "sots_indoor")
    assert found["published"] > 0


@pytest.mark.slow
def test_installed_train_entry_point_composes_from_the_wheel(install_dir, tmp_path):
    """The installed ``clipdehaze-train`` (``@hydra.main`` on ``pkg://clipdehaze.conf``) prints an experiment's
    composed job config."""
    out = _run([install_dir / "bin" / "clipdehaze-train", "--cfg", "job", "experiment=mixdehazenet_t_its"], tmp_path,
               env={**ENV, "PYTHONPATH": str(install_dir)})
    assert "name: mixdehazenet_t" in out and "file: configs/indoor/MixDehazeNet-t.json" in out
