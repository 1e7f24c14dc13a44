"""compile.enabled=true: the compiled generator equals the eager one; a model that cannot compile trains eager."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from clipdehaze.lit_module import DehazeLitModule

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture
def cxx():
    """Inductor's kernels are compiled once and kept in .cache/torchinductor (TORCHINDUCTOR_CACHE_DIR, set by
    tests/isolation.py): minutes on a 2-core CPU the first time, seconds once the cache holds them."""
    if not any(shutil.which(c) for c in (os.environ.get("CXX") or "g++", "g++", "c++", "clang++")):
        from conftest import require_or_skip

        require_or_skip("cxx", "torch.compile's inductor backend needs a C++ compiler on CPU (g++, c++ or clang++), "
                               "none found")


def _pair(name: str):
    torch.manual_seed(0)
    gen = {"name": name}
    clip = None
    if name in ("cliphaze_test", "mixcldehazenet_test", "sar_weather_test"):
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from omegaconf import OmegaConf

        from clipdehaze.utils.hydra_utils import register_with_hydra

        register_with_hydra()
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", [f"model={name}", "clip=tiny_random"])
        gen = OmegaConf.to_container(cfg.model, resolve=True)
        clip = OmegaConf.to_container(cfg.clip, resolve=True)
    compiled = DehazeLitModule(generator=gen, clip=clip, compile={"enabled": True}).eval()
    eager = DehazeLitModule(generator=gen, clip=clip).eval()
    eager.load_state_dict(compiled.state_dict())
    return compiled, eager


def _check(name: str, size: int = 64) -> None:
    compiled, eager = _pair(name)
    compiled.on_fit_start()   # where training compiles
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        a, b = compiled(x), eager(x)
    assert compiled.generator._compiled_call_impl is not None, "the generator ran eager: compile fell back"
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (name, (a - b).abs().max().item())
    assert compiled.state_dict().keys() == eager.state_dict().keys()   # checkpoints keep the eager keys


@pytest.mark.slow   # about 2 minutes of compiling on a 2-core CPU the first time
def test_compiled_equals_eager_dehazeformer_test(cxx):
    torch._dynamo.reset()
    _check("dehazeformer_test")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mixdehazenet_test", "mixcldehazenet_test", "cliphaze_test", "sar_weather_test"])
def test_compiled_equals_eager_test_variants(name, cxx):
    torch._dynamo.reset()
    _check(name)


def test_a_model_that_cannot_compile_warns_and_runs_eager(monkeypatch):
    module = DehazeLitModule(generator={"name": "dehazeformer_test"}, compile={"enabled": True}).eval()
    eager = module.generator.forward

    def broken(*args, **kwargs):
        raise RuntimeError("backend exploded")

    module.generator._compiled_call_impl = broken   # what a failing inductor compile looks like from the call
    x = torch.rand(1, 3, 32, 32)
    with pytest.warns(UserWarning, match="could not be compiled .*backend exploded.*running it eager"):
        out = module(x)
    assert module.generator._compiled_call_impl is None
    # the same grad mode as the call above: inference (no_grad) runs fused attention, rounding differently
    assert torch.equal(out, eager(x))


@pytest.mark.parametrize("override, points_to", [("model.compile=true", "compile.enabled=true"),
                                                 ("+model.compile=true", "compile.enabled=true"),
                                                 ("model.ema=true", "ema.enabled=true")])
def test_settings_typed_under_model_point_to_their_own_keys(override, points_to):
    """The issue's wording (``model.compile=true``) is what a user types; it stops in one sentence naming the key."""
    from clipdehaze.utils.hydra_utils import check_override_syntax

    with pytest.raises(SystemExit, match=rf"^{re.escape(override)}: .*{re.escape(points_to)}"):
        check_override_syntax(["model=dehazeformer_test", override])
    check_override_syntax(["model=dehazeformer_test", "compile.enabled=true", "ema.enabled=true"])
