"""Mixed precision on CPU: every generator trains under ``trainer.precision=bf16-mixed``, and what must stay float32
under autocast does (the selective scan, every softmax, DehazeFormer's RescaleNorm statistics, the CLIP prior and the
SAR weather prior's scaled cosines)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from clipdehaze.models import create_generator, list_generators
from clipdehaze.models.clip import FrozenCLIP
from clipdehaze.models.ssm import selective_scan
from clipdehaze.train import train
from test_ssm import cast, make_inputs

TRAINABLE_TEST_VARIANTS = [n for n in list_generators()
                           if n.endswith("_test") and any(p.requires_grad for p in create_generator(n).parameters())]
BF16_AUTOCAST = dict(device_type="cpu", dtype=torch.bfloat16)


class OpDtypes(TorchDispatchMode):
    """Records (op, input dtypes, output dtypes) of every ATen op, as it runs after autocast's casts."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        dtypes = [[t.dtype for t in tree_flatten(v)[0] if isinstance(t, torch.Tensor)] for v in ((args, kwargs), out)]
        self.calls.append((func, *dtypes))
        return out


def _tiny_clip() -> FrozenCLIP:
    return FrozenCLIP("clipdehaze_tiny", warn_random=False)


@pytest.mark.parametrize("name", TRAINABLE_TEST_VARIANTS)
def test_every_generator_trains_a_few_steps_under_bf16_mixed(name, compose_cfg, tiny_paired_root):
    overrides = [f"model={name}", "trainer=cpu", "trainer.precision=bf16-mixed", "trainer.max_epochs=1",
                 "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "test=false",
                 "data=paired", f"data.root={tiny_paired_root}", "data.crop_size=48", "data.batch_size=2",
                 "data.num_workers=0"]
    if getattr(create_generator(name), "clip_inputs", ()):
        overrides.append("clip=tiny_random")
    cfg = compose_cfg("train", overrides)
    seen = set()
    original = torch.nn.Conv2d.forward

    def spy(self, x):
        out = original(self, x)
        seen.add(out.dtype)
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.Conv2d, "forward", spy)
        summary = train(cfg)  # nonfinite_loss=raise: any NaN/Inf step would have stopped the run
    assert torch.bfloat16 in seen, "no convolution ran in bfloat16: autocast was not on"
    assert summary["global_step"] == 3
    assert math.isfinite(summary["metrics"]["train/loss"])


def test_selective_scan_computes_in_float32_under_autocast():
    inputs = cast(make_inputs(length=29, bc="grouped"), torch.bfloat16)
    with torch.autocast(**BF16_AUTOCAST), OpDtypes() as ops:
        out = selective_scan(**inputs, delta_softplus=True, backend="torch")
    assert out.dtype == torch.bfloat16
    computing = [(f, o) for f, _, o in ops.calls if f is not torch.ops.aten._to_copy.default and o]
    assert computing and all(torch.bfloat16 not in o for _, o in computing), \
        sorted({str(f) for f, o in computing if torch.bfloat16 in o})
    expected = selective_scan(**cast(inputs, torch.float64), delta_softplus=True, backend="torch")
    torch.testing.assert_close(out.double(), expected, rtol=1e-2, atol=1e-2)


def _clip_width(name: str, width: int) -> dict:
    """The CLIP width keyword of a CLIP-guided generator (text_dim for MixCLDehazeNet, clip_dim for the others)."""
    params = inspect.signature(type(create_generator(name)).__init__).parameters
    return {k: width for k in ("clip_dim", "text_dim") if k in params}


@pytest.mark.parametrize("name", TRAINABLE_TEST_VARIANTS)
def test_every_softmax_normalises_in_float32_under_autocast(name):
    torch.manual_seed(0)
    clip = _tiny_clip()
    model = create_generator(name, **_clip_width(name, clip.embed_dim))
    names = tuple(getattr(model, "clip_inputs", ()))
    x = torch.rand(2, 3, 40, 40)
    with torch.autocast(**BF16_AUTOCAST), OpDtypes() as ops:
        out = model(x, **clip.generator_inputs(names, x))
        out.float().mean().backward()
    softmax_ops = (torch.ops.aten._softmax.default, torch.ops.aten._log_softmax.default)
    inputs = [i for f, i, _ in ops.calls if f in softmax_ops]
    assert all(i[0] == torch.float32 for i in inputs), inputs
    assert any(torch.bfloat16 in o for _, _, o in ops.calls), "autocast was not on"


def test_rescale_norm_statistics_are_float32_under_autocast():
    """Features far from zero mean: a bfloat16 mean (spacing 0.5 at 100) would be off by more than their spread."""
    from clipdehaze.models.generators.dehazeformer import RLN

    norm = RLN(8)
    x = (100.3 + 0.5 * torch.randn(2, 8, 6, 6)).bfloat16()
    with torch.autocast(**BF16_AUTOCAST):
        out, _, rebias_in = norm(x)
    xd = x.double()
    mean = xd.mean(dim=(1, 2, 3), keepdim=True)
    expected = (xd - mean) / torch.sqrt((xd - mean).square().mean(dim=(1, 2, 3), keepdim=True) + norm.eps)
    assert out.dtype == torch.bfloat16
    assert (out.double() - expected).abs().max() < 0.05


def test_clip_prior_outputs_are_the_same_under_autocast():
    clip = _tiny_clip()
    x = torch.rand(2, 3, 50, 70)
    names = ("text_feature", "image_embedding", "density_map")
    plain = clip.generator_inputs(names, x)
    with torch.autocast(**BF16_AUTOCAST):
        mixed = clip.generator_inputs(names, x)
    for k in names:
        assert mixed[k].dtype == torch.float32
        torch.testing.assert_close(mixed[k], plain[k], rtol=0, atol=0, msg=k)


def test_weather_prior_cosine_logits_are_float32_under_autocast():
    from clipdehaze.models.generators.sar_weather import CLIPWeatherPrior

    torch.manual_seed(0)
    prior = CLIPWeatherPrior(clip_dim=64, prior_dim=16)
    prior.log_scale.data.fill_(math.log(100.0))
    emb = torch.nn.functional.normalize(torch.randn(4, 64), dim=-1)
    with torch.autocast(**BF16_AUTOCAST):
        mixed = prior.weights(emb)
    torch.testing.assert_close(mixed, prior.weights(emb), rtol=0, atol=1e-6)
