"""Every upstream training recipe is an experiment option, and every value it sets is upstream's.

The oracle is data: byte-for-byte copies of the upstream config files (tests/data/upstream_recipes/, with
SOURCES.yaml naming repository and commit) and the lines of each upstream train.py that fix the shared parts of the
loop (quoted in SOURCES.yaml; found in the snapshots when they are present). The expected config values below are
written from those quotes and from torch's own AdamW/Adam signatures, never from clipdehaze's recipe code.
"""

from __future__ import annotations

import inspect
import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from clipdehaze.reproduce import recipes as R

UPSTREAM = Path(__file__).parent / "data" / "upstream_recipes"
SOURCES = yaml.safe_load((UPSTREAM / "SOURCES.yaml").read_text())
MIRRORS = Path("/work/.mirror")
REPO = Path(__file__).resolve().parents[1]

#: upstream --exp -> (the data config ours trains on, the test set its numbers are reported on), as the brief of
#: each paper states them (DehazeFormer's README and run.sh: RESIDE-IN / RESIDE-OUT / RESIDE-6K / RSHaze).
SETTINGS = {"indoor": ("its", "sots_indoor"), "outdoor": ("ots", "sots_outdoor"), "reside6k": ("reside6k", "reside6k"),
            "rshaze": ("rs_haze", "rs_haze"), "haze4k": ("haze4k", "haze4k"), "densehaze": ("dense_haze", "dense_haze"),
            "nhhaze": ("nh_haze", "nh_haze")}
#: upstream repository folder -> (our generator family, the loss config that is upstream's loss line).
FAMILIES = {"DehazeFormer": ("dehazeformer", "l1 x2"), "MixDehazeNet": ("mixdehazenet", "l1 + 0.1 cr"),
            "MixCLDehazeNet": ("mixcldehazenet", "l1 + 0.1 cr")}


def upstream_files() -> list[tuple[str, str, str]]:
    """(repo folder, setting, file name) of every vendored upstream config file."""
    return sorted((p.parts[-3], p.parent.name, p.name) for p in UPSTREAM.glob("*/*/*.json"))


def upstream_config(repo: str, setting: str, name: str) -> dict | None:
    text = (UPSTREAM / repo / setting / name).read_text()
    return json.loads(text) if text.strip() else None


def experiment_name(repo: str, setting: str, name: str) -> str:
    family = FAMILIES[repo][0]
    stem = Path(name).stem
    if stem == "default":
        return f"{family}_{SETTINGS[setting][0]}_default"
    return f"{family}_{stem.rsplit('-', 1)[-1].lower()}_{SETTINGS[setting][0]}"


def torch_defaults(cls) -> dict:
    sig = inspect.signature(cls)
    return {k: sig.parameters[k].default for k in ("betas", "eps", "weight_decay", "amsgrad")}


def mismatches(cfg, repo: str, setting: str, upstream: dict) -> list[str]:
    """Every value of a composed ``experiment=`` config that differs from what upstream's train.py does with
    ``upstream`` (a config file's numbers); see SOURCES.yaml's quotes for the loop."""
    out = []

    def check(key: str, got, want) -> None:
        if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
            same = got == want  # exact: upstream computes these in Python floats too
        else:
            same = got == want
        if not same:
            out.append(f"{key}: ours {got!r}, upstream {want!r}")

    c = upstream
    valid = c["valid_mode"] == "valid"
    # PairLoader(..., 'train', patch_size, edge_decay, only_h_flip): crop, h-flip, then rot90 unless only_h_flip
    check("data.batch_size", cfg.data.batch_size, c["batch_size"])
    check("data.crop_size", cfg.data.crop_size, c["patch_size"])
    check("data.edge_decay", cfg.data.edge_decay, float(c["edge_decay"]))
    check("data.augment", list(cfg.data.augment), ["hflip"] if c["only_h_flip"] else ["hflip", "rot90"])
    # PairLoader(..., 'test', valid_mode, patch_size): 'valid' = centre crop of patch_size, 'test' = full image;
    # the val loader takes batch_size=setting['batch_size'] (full images: one at a time here, same per-image mean)
    check("data.val_crop_size", cfg.data.val_crop_size, None if valid else 0)
    check("data.val_batch_size", cfg.data.val_batch_size, c["batch_size"] if valid else 1)
    check("data.name", cfg.data.name, SETTINGS[setting][1])
    check("data (train)", cfg.hydra.runtime.choices.data, SETTINGS[setting][0])
    # torch.optim.AdamW(network.parameters(), lr=setting['lr']): torch's defaults for the rest
    opt_cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[c["optimizer"]]
    check("optimizer._target_", cfg.optimizer._target_, f"torch.optim.{opt_cls.__name__}")
    check("optimizer.lr", cfg.optimizer.lr, c["lr"])
    for k, v in torch_defaults(opt_cls).items():
        got = cfg.optimizer.get(k)
        check(f"optimizer.{k}", list(got) if k == "betas" and got is not None else got, list(v) if k == "betas" else v)
    # CosineAnnealingLR(optimizer, T_max=setting['epochs'], eta_min=setting['lr'] * 1e-2), stepped once per epoch
    check("scheduler._target_", cfg.scheduler.scheduler._target_, "torch.optim.lr_scheduler.CosineAnnealingLR")
    check("scheduler.T_max", cfg.scheduler.scheduler.T_max, c["epochs"])
    check("scheduler.eta_min", cfg.scheduler.scheduler.eta_min, c["lr"] * 1e-2)
    check("scheduler.interval", cfg.scheduler.interval, "epoch")
    check("scheduler.frequency", cfg.scheduler.frequency, 1)
    # for epoch in range(setting['epochs'] + 1): one epoch more than the file says
    check("trainer.max_epochs", cfg.trainer.max_epochs, c["epochs"] + 1)
    check("trainer.max_steps", cfg.trainer.max_steps, -1)
    # if epoch % setting['eval_freq'] == 0: validate after 0-based epochs 0, f, 2f, ... (EvalFreq, every epoch's
    # own check left at 1 so the callback decides)
    check("callbacks.eval_freq._target_", cfg.callbacks.eval_freq._target_, "clipdehaze.callbacks.EvalFreq")
    check("callbacks.eval_freq.eval_freq", cfg.callbacks.eval_freq.eval_freq, c["eval_freq"])
    check("trainer.check_val_every_n_epoch", cfg.trainer.check_val_every_n_epoch, 1)
    # with autocast(...) + GradScaler(): fp16 mixed precision on a CUDA device; no gradient clipping
    check("trainer.precision", cfg.trainer.precision, "16-mixed")
    check("trainer.accelerator", cfg.trainer.accelerator, "gpu")
    check("trainer.gradient_clip_val", cfg.trainer.gradient_clip_val, None)
    check("trainer.accumulate_grad_batches", cfg.trainer.accumulate_grad_batches, 1)
    # the loss line
    loss = FAMILIES[repo][1]
    if loss == "l1 x2":  # nn.L1Loss() on [-1, 1] images = 2 x L1 on [0, 1]
        check("loss._target_", cfg.loss._target_, "clipdehaze.losses.L1Loss")
        check("loss.scale", cfg.loss.scale, 2.0)
    else:  # criterion[0](output, target) + criterion[1](output, target, source) * 0.1
        check("loss._target_", cfg.loss._target_, "clipdehaze.losses.L1WithCR")
        check("loss.cr_weight", cfg.loss.cr_weight, 0.1)
        check("loss.input_norm", cfg.loss.input_norm, "upstream")
        check("loss.batchnorm", cfg.loss.batchnorm, "batch")
    source = SOURCES[repo]
    check("recipe.repo", cfg.recipe.repo, source["repo"])
    check("recipe.commit", cfg.recipe.commit, source["commit"])
    check("recipe.config", dict(cfg.recipe.config), c)
    return out


def compose_experiment(compose_cfg, name: str, extra: list[str] = ()):
    overrides = [f"experiment={name}", *extra]
    if name.endswith("_default"):
        overrides.append(f"model={name.split('_', 1)[0]}_t")
    return compose_cfg("train", overrides)


# ----------------------------------------------------------------------------------------------------- coverage
def test_every_upstream_file_is_vendored_byte_for_byte():
    """The vendored files are the snapshots' (every file of configs/ at the recorded commit, nothing else)."""
    checked = 0
    for repo, source in SOURCES.items():
        git = MIRRORS / source["mirror"] / "repo"
        if not git.is_dir():
            continue
        ls = subprocess.run(["git", "-C", str(git), "ls-tree", "-r", "--name-only", source["commit"], "configs"],
                            capture_output=True, text=True, check=True).stdout.split()
        wanted = ls if source["files"] == "configs" else source["files"]
        vendored = sorted(str(p.relative_to(UPSTREAM / repo)) for p in (UPSTREAM / repo).rglob("*") if p.is_file())
        assert vendored == sorted(f.removeprefix("configs/") for f in wanted), repo
        for f in wanted:
            blob = subprocess.run(["git", "-C", str(git), "show", f"{source['commit']}:{f}"], capture_output=True,
                                  check=True).stdout
            assert (UPSTREAM / repo / f.removeprefix("configs/")).read_bytes() == blob, f
            checked += 1
        text = subprocess.run(["git", "-C", str(git), "show", f"{source['commit']}:train.py"], capture_output=True,
                              text=True, check=True).stdout
        lines = {line.strip() for line in text.splitlines()}
        for what, quote in source["loop"].items():
            assert quote in lines, f"{repo} train.py@{source['commit'][:7]} has no line {quote!r} ({what})"
    if not checked:
        pytest.skip(f"upstream snapshots not found under {MIRRORS}")


def test_the_vendored_files_are_all_upstream_configs():
    """23 DehazeFormer files (4 settings, each default.json included), 21 MixDehazeNet files (one of them empty)
    and MixCLDehazeNet's one."""
    counts = {repo: sum(1 for f in upstream_files() if f[0] == repo) for repo in SOURCES}
    assert counts == {"DehazeFormer": 23, "MixDehazeNet": 21, "MixCLDehazeNet": 1}
    assert (UPSTREAM / "MixDehazeNet" / "nhhaze" / "MixDehazeNet-l.json").read_bytes() == b""


def test_every_upstream_file_is_a_recipe_with_its_numbers():
    by_file = {(r.upstream.repo, r.file): r for r in R.recipes().values()}
    assert len(set(map(id, by_file.values()))) == len(upstream_files()) == 45
    for repo, setting, name in upstream_files():
        recipe = by_file[(SOURCES[repo]["repo"], f"configs/{setting}/{name}")]
        assert recipe.upstream.commit == SOURCES[repo]["commit"]
        assert recipe.name == experiment_name(repo, setting, name)
        assert recipe.config == upstream_config(repo, setting, name), (repo, setting, name)


RUNNABLE = [f for f in upstream_files() if upstream_config(*f) is not None]


@pytest.mark.parametrize("repo,setting,name", RUNNABLE, ids=["/".join(f) for f in RUNNABLE])
def test_generated_experiment_equals_upstream(repo, setting, name, compose_cfg):
    """Every value an ``experiment=`` sets against the upstream file and train.py (44 runnable files)."""
    exp = experiment_name(repo, setting, name)
    cfg = compose_experiment(compose_cfg, exp)
    assert mismatches(cfg, repo, setting, upstream_config(repo, setting, name)) == []
    if not exp.endswith("_default"):
        assert cfg.model.name == exp.rsplit("_" + SETTINGS[setting][0], 1)[0]
    assert cfg.recipe.file == f"configs/{setting}/{name}"


def test_mixcldehazenet_recipe_is_the_31_16_revision(compose_cfg):
    """train.sh at 28ab0b9: MixDehazeNet-s with the text branch on GPUS="0" (one GPU: batch 16 is the global batch)
    from configs/reside6k/MixDehazeNet-s.json (batch 16, eval every epoch); CLIP ViT-B/32's text feature."""
    train_sh = (UPSTREAM / "MixCLDehazeNet" / "train.sh").read_text()
    assert 'GPUS="0"' in train_sh and "--model MixDehazeNet-s" in train_sh and 'EXP="reside6k"' in train_sh
    cfg = compose_experiment(compose_cfg, "mixcldehazenet_reside6k")  # the name users typed before stays
    assert cfg.model.name == "mixcldehazenet_s" and cfg.clip.model_name == "ViT-B-32" and cfg.clip.pretrained == "openai"
    assert cfg.data.batch_size == 16 and cfg.callbacks.eval_freq.eval_freq == 1
    assert cfg.trainer.devices == 1 and cfg.recipe.experiment == "mixcldehazenet_s_reside6k"


def test_unread_upstream_keys_are_recorded_not_applied(compose_cfg):
    """MixDehazeNet-t's indoor file has warmup/const/frozen epochs that upstream's train.py never reads."""
    cfg = compose_experiment(compose_cfg, "mixdehazenet_t_its")
    assert set(cfg.recipe.unread) == {"warmup_epochs", "const_epochs", "frozen_epochs"}
    assert cfg.recipe.config.warmup_epochs == 15 and cfg.scheduler.scheduler._target_.endswith("CosineAnnealingLR")


def test_default_recipes_take_the_model_from_the_command_line(compose_cfg):
    """default.json serves any variant without its own file (upstream: dehazeformer-l on outdoor)."""
    cfg = compose_cfg("train", ["experiment=dehazeformer_ots_default", "model=dehazeformer_l"])
    assert cfg.model.name == "dehazeformer_l" and cfg.data.batch_size == 32 and cfg.recipe.model is None
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="You must specify 'model'"):
        compose_cfg("train", ["experiment=dehazeformer_ots_default"])


def test_an_empty_upstream_file_stops_with_the_reason():
    from clipdehaze.utils.hydra_utils import check_override_syntax

    for argv in (["experiment=mixdehazenet_l_nh_haze"], ["-m", "experiment=mixdehazenet_s_nh_haze,mixdehazenet_l_nh_haze"]):
        with pytest.raises(SystemExit, match=r"configs/nhhaze/MixDehazeNet-l\.json is an empty file upstream.*"
                                             r"JSONDecodeError.*mixdehazenet_s_nh_haze"):
            check_override_syntax(argv)
    check_override_syntax(["experiment=mixdehazenet_s_nh_haze"])


def test_recipe_lr_sequence_is_upstreams_cosine(compose_cfg, tiny_paired_root):
    """The module built from a recipe steps the lr as upstream's scheduler does over its epochs + 1 epochs: the
    closed-form cosine with T_max = epochs and eta_min = lr / 100 (not T_max = max_epochs)."""
    from clipdehaze.build import build_module

    cfg = compose_experiment(compose_cfg, "dehazeformer_t_ots", ["model=dehazeformer_test"])
    module = build_module(cfg)
    module.trainer = None
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    lr, epochs = 4e-4, 30
    eta = lr * 1e-2
    seen = []
    for _ in range(cfg.trainer.max_epochs):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [eta + (lr - eta) * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs + 1)]
    assert len(seen) == epochs + 1 and seen == pytest.approx(want, rel=1e-12, abs=0)


# ----------------------------------------------------------------------------------------------------- negatives
def test_a_changed_number_is_caught(compose_cfg):
    """The checker is not blind: one upstream number changed (or one experiment value) is reported by key."""
    cfg = compose_experiment(compose_cfg, "dehazeformer_t_its")
    upstream = upstream_config("DehazeFormer", "indoor", "dehazeformer-t.json")
    assert mismatches(cfg, "DehazeFormer", "indoor", upstream) == []
    for key, value, reported in (("lr", 5e-4, "optimizer.lr"), ("epochs", 299, "trainer.max_epochs"),
                                 ("only_h_flip", True, "data.augment"), ("valid_mode", "valid", "data.val_crop_size"),
                                 ("eval_freq", 10, "callbacks.eval_freq.eval_freq")):
        found = mismatches(cfg, "DehazeFormer", "indoor", {**upstream, key: value})
        assert any(m.startswith(reported) for m in found), (key, found)
    cfg.scheduler.scheduler.eta_min = 4e-6  # 4e-4 * 1e-2 is 4.000000000000001e-06 in floats, as upstream computes
    assert mismatches(cfg, "DehazeFormer", "indoor", upstream) == ["scheduler.eta_min: ours 4e-06, upstream "
                                                                   "4.000000000000001e-06"]


def test_a_recipe_table_with_a_changed_number_is_caught(tmp_path):
    source = REPO / "experiments" / "dehazeformer" / "recipes.yaml"
    changed = tmp_path / "dehazeformer" / "recipes.yaml"
    changed.parent.mkdir()
    text = source.read_text()
    line = "  - file: configs/reside6k/dehazeformer-s.json\n    config: {batch_size: 16"
    assert line in text
    changed.write_text(text.replace(line, line.replace("16", "24")))
    paper = R.read_paper(changed)
    recipe = paper.recipes["dehazeformer_s_reside6k"]
    assert recipe.config != upstream_config("DehazeFormer", "reside6k", "dehazeformer-s.json")
    assert R.experiment_node(recipe)["data"]["batch_size"] == 24


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace("eval_freq: 1}", "eval_freq: 1, warmup_epochs: 5}", 1),
     r"keys upstream's train\.py does not read \['warmup_epochs'\].*unread"),
    (lambda t: t.replace("commit: 5af7c34d6f8e0784a88a2132a7add296bf99ca9c", "commit: 5af7c34"),
     r"upstreams\.dehazeformer\.commit must be a full 40-hex commit"),
    (lambda t: t.replace("valid_mode: test", "valid_mode: full", 1), r"valid_mode='full'"),
    (lambda t: t.replace("rows: [dehazeformer_t_ots", "rows: [dehazeformer_x_ots"), r"names \['dehazeformer_x_ots'\]"),
    (lambda t: t.replace("title: DehazeFormer", "titel: DehazeFormer"), r"unknown keys \['titel'\]"),
])
def test_bad_recipe_tables_are_refused_naming_the_file(tmp_path, edit, message):
    source = REPO / "experiments" / "dehazeformer" / "recipes.yaml"
    bad = tmp_path / "recipes.yaml"
    bad.write_text(edit(source.read_text()))
    with pytest.raises(ValueError, match=rf"{bad}: .*{message}"):
        R.read_paper(bad)


# ----------------------------------------------------------------------------------------------------- the loop
def _fit_epochs(compose_cfg, root: Path, overrides: list[str]) -> list[int]:
    """The 0-based epochs after which a short CPU fit validated."""
    import lightning as L

    from clipdehaze.build import build_datamodule, build_module, build_trainer

    cfg = compose_cfg("train", ["model=dehazeformer_test", "data=paired", f"data.root={root}", "data.crop_size=32",
                                "data.batch_size=2", "data.num_workers=0", "trainer=cpu", "trainer.max_epochs=5",
                                "trainer.num_sanity_val_steps=0", "trainer.limit_train_batches=1",
                                "trainer.limit_val_batches=1", "logger=csv", "~callbacks.rich_progress_bar",
                                "~callbacks.model_summary", *overrides])
    validated: list[int] = []

    class Record(L.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            validated.append(trainer.current_epoch)

    trainer = build_trainer(cfg)
    trainer.callbacks.append(Record())
    trainer.fit(build_module(cfg), datamodule=build_datamodule(cfg))
    return validated


def test_eval_freq_validates_upstreams_epochs(compose_cfg, tiny_paired_root):
    """Upstream validates after 0-based epochs 0, 2, 4 of 5 for eval_freq 2 (the last one included); Lightning's
    check_val_every_n_epoch=2 alone validates after 1 and 3."""
    ours = _fit_epochs(compose_cfg, tiny_paired_root, ["+callbacks.eval_freq._target_=clipdehaze.callbacks.EvalFreq",
                                                       "+callbacks.eval_freq.eval_freq=2"])
    assert ours == [e for e in range(5) if e % 2 == 0]
    assert _fit_epochs(compose_cfg, tiny_paired_root, ["trainer.check_val_every_n_epoch=2"]) == [1, 3]
