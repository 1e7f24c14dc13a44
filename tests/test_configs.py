"""Every option of every config group composes (and resolves) in the entry points that use it."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
# prompts/ is a sub-group composed inside every clip/ option, so it is covered through clip=...
GROUPS = sorted(p.name for p in CONF.iterdir()
                if p.is_dir() and not p.name.startswith("_") and p.name not in ("hydra", "prompts"))


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _generators() -> list[str]:
    from clipdehaze.models import list_generators

    return list_generators()


# The model group has no folder: its options come from the generators' variant files.
CASES = [(g, o) for g in GROUPS for o in _options(g)] + [("model", name) for name in _generators()]


@pytest.mark.parametrize("group,option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_group_option_composes(group, option, compose_cfg, tmp_path):
    overrides = [f"{group}={option}"]
    if group == "model" and option.startswith(("mixcl", "cliphaze", "sar")):
        overrides.append("clip=tiny_random")
    cfg = compose_cfg("train", overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert resolved["model"]["name"]
    assert resolved["data"]["_target_"].startswith("clipdehaze.data.")


@pytest.mark.slow
def test_model_group_lists_every_generator_with_its_numbers(compose_cfg):
    from clipdehaze.utils.hydra_utils import config_groups

    assert config_groups()["model"] == _generators()
    model = compose_cfg("train", ["model=dehazeformer_s"]).model
    assert model.name == "dehazeformer_s" and list(model.depths) == [8, 8, 8, 4, 4]
    assert list(model.embed_dims) == [24, 48, 96, 48, 24] and list(model.conv_type) == ["DWConv"] * 5
    model = compose_cfg("train", ["model=mixcldehazenet_s", "clip=tiny_random"]).model
    assert list(model.depths) == [2, 2, 4, 2, 2] and model.fusion == "parametric" and model.text_dim == 64


@pytest.mark.slow
def test_data_clip_cache_help_lists_config_groups(cli, tmp_path):
    out = cli("data", ["clip-cache", "--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Configuration groups" in out.stdout
    assert "clip:" in out.stdout and "tiny_random" in out.stdout and "model:" in out.stdout


def test_unknown_config_option_or_key_is_a_clear_error(compose_cfg):
    from hydra.errors import HydraException

    with pytest.raises(HydraException, match=r"(?s)Could not find 'model/dehazeformer_xxl'.*Available options.*"
                                             r"dehazeformer_t.*mixcldehazenet_s"):
        compose_cfg("train", ["model=dehazeformer_xxl"])
    with pytest.raises(HydraException, match=r"(?s)Could not override 'data\.crop_sise'.*crop_sise"):
        compose_cfg("train", ["data.crop_sise=128"])


def test_unknown_generator_lists_valid_names():
    from clipdehaze.models import create_generator

    with pytest.raises(KeyError, match="registered generators: .*dehazeformer_t"):
        create_generator("dehazeformer_xxl")


@pytest.mark.parametrize("tool", ["train", "eval", "predict"])
@pytest.mark.slow
def test_help_lists_config_groups(tool, cli, tmp_path):
    out = cli(tool, ["--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Configuration groups" in out.stdout
    assert "model:" in out.stdout
