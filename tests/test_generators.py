"""The generator house: variant files, the leaf registry, the contract, and a generator added from outside the
package (one architecture file + one variant file) run through clipdehaze-train and clipdehaze-table."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from clipdehaze.models import Generator, create_generator, list_generators
from clipdehaze.models.variants import GENERATOR_PATH_ENV, variants

REPO = Path(__file__).resolve().parents[1]


def _python(code: str) -> str:
    path = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": path})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_registry_is_a_leaf_and_architectures_load_on_demand():
    """Importing the registry imports no architecture; building one generator imports its own file only."""
    loaded = _python("import sys, clipdehaze.models.registry; from clipdehaze.models import create_generator; "
                     "create_generator('identity'); "
                     "print(sorted(m for m in sys.modules if m.startswith('clipdehaze.models.generators.')))")
    assert loaded == "['clipdehaze.models.generators.identity']"
    source = (REPO / "src" / "clipdehaze" / "models" / "registry.py").read_text()
    assert "import clipdehaze" not in source and "from clipdehaze" not in source


@pytest.mark.parametrize("name", list_generators())
def test_every_generator_keeps_the_contract(name):
    with torch.device("meta"):
        model = create_generator(name)
    assert isinstance(model, Generator) and model.generator_name == name
    assert isinstance(model.clip_inputs, tuple) and isinstance(model.auxiliary_terms, tuple)
    assert isinstance(model.min_size, int) and model.min_size >= 1


def test_variant_factories_are_the_variant_files_sizes():
    from clipdehaze.models.generators import dehazeformer, mixdehazenet

    model = dehazeformer.dehazeformer_s(depths=(1, 1, 1, 1, 1))
    assert model.generator_name == "dehazeformer_s" and len(model.layer1.blocks) == 1
    assert dehazeformer.dehazeformer_s.__name__ == "dehazeformer_s"
    assert mixdehazenet.mixcldehazenet_test().fusion == "parametric"
    with pytest.raises(AttributeError, match="mixdehazenet_t"):
        dehazeformer.mixdehazenet_t  # noqa: B018 - another file's variant is not this module's


def test_no_variant_file_copies_another():
    """A variant differs from its siblings in numbers, not only in its name."""
    seen: dict[str, str] = {}
    for v in variants().values():
        key = json.dumps([v.module, v.family, v.arguments, v.run_settings], sort_keys=True)
        assert key not in seen, f"{v.name} is a copy of {seen.get(key)}"
        seen[key] = v.name


# ---------------------------------------------------------------------------------------- generators from outside

TOY_ARCHITECTURE = '''
"""A toy generator kept outside the package: one residual convolution pair."""
import torch.nn as nn

from clipdehaze.models import GeneratorBase, register_generator


@register_generator("toynet")
class ToyNet(GeneratorBase):
    def __init__(self, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)
'''

TOY_VARIANTS = """
module: toynet
families:
  toynet: {}
variants:
  test: {width: 4}
  wide: {width: 16}
"""


def _write_toy(folder: Path, architecture: str = TOY_ARCHITECTURE, variant_file: str = TOY_VARIANTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "toynet.py").write_text(textwrap.dedent(architecture))
    (folder / "toynet.yaml").write_text(textwrap.dedent(variant_file))
    return folder


@pytest.fixture
def toy_dir(tmp_path, monkeypatch):
    folder = _write_toy(tmp_path / "toy")
    monkeypatch.setenv(GENERATOR_PATH_ENV, str(folder))
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    sys.modules.pop("toynet", None)


def test_a_generator_from_outside_builds_by_name(toy_dir):
    assert {"toynet_test", "toynet_wide"} <= set(list_generators())
    model = create_generator("toynet_wide")
    assert model.body[0].out_channels == 16 and model.generator_name == "toynet_wide"
    assert create_generator("toynet_test", width=6).body[0].out_channels == 6
    assert variants()["toynet_test"].model_config() == {"name": "toynet_test", "width": 4}


@pytest.mark.parametrize("variant_file,error,match", [
    ("module: toynet\nfamilies: {toynet: {}}\nsizes: {t: {}}\n", ValueError, r"toynet\.yaml: unknown keys \['sizes'\]"),
    ("families: {toynet: {}}\n", ValueError, r"toynet\.yaml: module must name the architecture file"),
    ("module: toynet\n", ValueError, r"toynet\.yaml: families must name at least one"),
    ("module: toynet\nfamilies: {dehazeformer: {}}\n", ValueError, r"family 'dehazeformer' is defined twice"),
    ("module: toynet_missing\nfamilies: {toynet: {}}\n", ImportError, r"toynet\.yaml: cannot import module"),
    ("module: toynet\nfamilies: {toyfamily: {}}\n", LookupError,
     r"toynet\.yaml: module toynet registers no generator family 'toyfamily'.*@register_generator\('toyfamily'\)"),
])
def test_a_bad_variant_file_is_an_error_naming_it(variant_file, error, match, tmp_path, monkeypatch):
    folder = _write_toy(tmp_path / "toy", variant_file=variant_file)
    monkeypatch.setenv(GENERATOR_PATH_ENV, str(folder))
    monkeypatch.syspath_prepend(str(folder))
    try:
        with pytest.raises(error, match=match):
            create_generator("toyfamily" if "toyfamily" in variant_file else "toynet")
    finally:
        sys.modules.pop("toynet", None)


def test_a_generator_without_the_contract_is_refused(tmp_path, monkeypatch):
    plain = TOY_ARCHITECTURE.replace("GeneratorBase, register_generator", "register_generator").replace(
        "class ToyNet(GeneratorBase)", "class ToyNet(nn.Module)")
    folder = _write_toy(tmp_path / "toy", architecture=plain)
    monkeypatch.setenv(GENERATOR_PATH_ENV, str(folder))
    monkeypatch.syspath_prepend(str(folder))
    try:
        with pytest.raises(TypeError, match=r"'toynet_test'.*lacks \['clip_inputs', 'auxiliary_terms', 'min_size', "
                                            r"'auxiliary_losses'\].*GeneratorBase"):
            create_generator("toynet_test")
    finally:
        sys.modules.pop("toynet", None)


def test_a_missing_generator_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(GENERATOR_PATH_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=f"{GENERATOR_PATH_ENV} lists .*nowhere"):
        list_generators()


@pytest.mark.slow
def test_a_generator_from_outside_trains_and_enters_the_table(tmp_path, tiny_paired_root):
    """The toy's two files in a folder of their own, nothing else changed: clipdehaze-train shows its numbers,
    trains it, and clipdehaze-table lists it (building it again, by name, to count its MACs)."""
    folder = _write_toy(tmp_path / "toy")
    env = {**os.environ, GENERATOR_PATH_ENV: str(folder), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(folder), str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}

    def cli(tool: str, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", tool, *args], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout

    assert "name: toynet_test\n  width: 4\n" in cli("clipdehaze.train", "--cfg", "job", "model=toynet_test")
    run = tmp_path / "run"
    cli("clipdehaze.train", "model=toynet_test", f"hydra.run.dir={run}", "trainer=cpu", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "callbacks.rich_progress_bar=null",
        "data=paired", f"data.root={tiny_paired_root}", "data.crop_size=48", "data.batch_size=2",
        "data.num_workers=0", "data.name=tiny")
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["generator"] == "toynet_test" and summary["params"] == 2 * (3 * 4 * 9) + 4 + 3
    assert "toynet_test" in cli("clipdehaze.table", str(run), "--macs", "--out", str(tmp_path / "table"))
    with open(tmp_path / "table" / "table.csv", newline="") as f:
        (row,) = [r for r in csv.DictReader(f) if r["generator"] == "toynet_test"]
    # MACs at 256²: two 3x3 convolutions, 3 -> 4 -> 3 channels.
    assert float(row["macs_g"]) == pytest.approx(2 * 3 * 4 * 9 * 256 * 256 / 1e9, rel=1e-3)


def test_variant_factories_are_one_object_per_name_and_probes_never_raise(monkeypatch, tmp_path):
    """``from ...dehazeformer import dehazeformer_t`` is a stable, picklable function; ``hasattr`` on an
    architecture module answers False (not an exception) even when a variant folder is missing."""
    import pickle

    from clipdehaze.models.generators import dehazeformer

    factory = dehazeformer.dehazeformer_test
    assert factory is dehazeformer.dehazeformer_test
    assert pickle.loads(pickle.dumps(factory)) is factory
    assert not hasattr(dehazeformer, "_not_a_variant") and not hasattr(dehazeformer, "cliphaze_t")
    monkeypatch.setenv(GENERATOR_PATH_ENV, str(tmp_path / "nowhere"))
    assert not hasattr(dehazeformer, "dehazeformer_zz")
