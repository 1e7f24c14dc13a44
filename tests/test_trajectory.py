"""``clipdehaze-reproduce trajectory``: our training loop (DehazeLitModule + its optimizer/scheduler configs + a
Lightning Trainer) replays upstream DehazeFormer-T's recorded training run within the tolerances of
shared/reference/README.md, and the check fails where the loop, the file or the recipe is off.

The oracle is upstream's own run (losses, learning rates, final weights recorded by its ``train.py``); the
tolerances and noise floor are the README's, kept here as data."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch

from clipdehaze.reproduce import trajectory as T
from conftest import require_or_skip

TRAJECTORY = "reference/trajectories/dehazeformer_t_indoor_seed0.pt"
#: shared/reference/README.md: losses to 1e-5 relative, learning rates exactly, final weights to 1e-5 at the 99.9th
#: percentile and 2e-4 at the maximum.
README_TOLERANCE = {"loss_rel": 1e-5, "lr_abs": 0.0, "weight_p999": 1e-5, "weight_max": 2e-4}
#: The upstream recipe the file shrinks (IDKiro/DehazeFormer configs/indoor/dehazeformer-t.json: lr 4e-4, 300 epochs,
#: AdamW; train.py: eta_min = lr * 1e-2, range(epochs + 1)).
UPSTREAM_LR, UPSTREAM_EPOCHS = 4e-4, 300


@pytest.fixture(scope="module")
def shared_file(shared_dir) -> Path:
    path = shared_dir / TRAJECTORY
    if not path.is_file():
        require_or_skip("shared", f"{path} not found: the recorded upstream trajectory is part of the project's "
                                  "shared/ folder")
    return path


@pytest.fixture(scope="module")
def shared(shared_file) -> T.Trajectory:
    return T.load_trajectory(shared_file)


@pytest.fixture(scope="module")
def shared_replay(shared) -> T.Replay:
    return T.replay(shared)


def _raw(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = T.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------------------------------------- (a) parity
def test_the_tolerances_and_noise_floor_are_the_readmes(shared_dir):
    assert T.TOLERANCE == README_TOLERANCE
    text = " ".join((shared_dir / "reference" / "README.md").read_text().split())
    assert ("reproduces every loss to 1e-5 relative (after the ×2 scale), every learning rate exactly, and the final "
            "weights to 1e-5 at the 99.9th percentile and 2e-4 at the maximum") in text
    assert ("losses differ by ≤ 2e-7 relative; final weights by ≤ 3.3e-5 (max), 4e-7 at the 99.9th percentile, and "
            "0.03% of entries by more than 1e-6") in text
    assert T.NOISE_FLOOR == {"loss_rel": 2e-7, "weight_max": 3.3e-5, "weight_p999": 4e-7, "weight_share": 3e-4}


@pytest.mark.slow
def test_replay_of_the_upstream_trajectory_is_within_the_readme_tolerances(shared_file, tmp_path, capsys):
    rc, out, err = _run([shared_file, "--json", tmp_path / "figures.json"], capsys)
    assert rc == 0, out + err
    assert out.rstrip().splitlines()[-2].startswith("PASS")
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["passed"] and not figures["failures"]
    assert figures["steps"]["ours"] == list(range(8))  # every recorded batch, in the recorded order
    assert figures["loss_max_rel_dev"] <= README_TOLERANCE["loss_rel"]
    assert figures["lr_max_abs_dev"] == 0.0
    assert figures["weights"]["p999"] <= README_TOLERANCE["weight_p999"]
    assert figures["weights"]["max"] <= README_TOLERANCE["weight_max"]
    assert figures["weights"]["entries"] == sum(v.numel() for v in _raw(shared_file)["final_state_dict"].values())
    assert figures["full_schedules"]["300"]["max_abs_dev"] == 0.0
    assert figures["full_schedules"]["300"]["epochs"] == UPSTREAM_EPOCHS + 1
    # The recipe came from the file: the overrides carry its numbers.
    assert "optimizer.lr=0.0004" in figures["overrides"] and "scheduler.scheduler.T_max=4" in figures["overrides"]
    assert "loss=l1_upstream" in figures["overrides"]


# ----------------------------------------------------------------------------------------------------- (b) the check fails
@pytest.mark.slow
def test_a_file_whose_losses_lrs_and_weights_are_perturbed_fails_naming_each(shared_file, tmp_path, capsys):
    raw = _raw(shared_file)
    raw["loss_per_step_upstream_scale"][5] *= 1 + 5e-5
    raw["lr_per_epoch"][2] = math.nextafter(raw["lr_per_epoch"][2], 1.0)  # one ulp: lrs must match exactly
    key = "layer2.blocks.2.mlp.mlp.0.weight"
    raw["final_state_dict"][key] = raw["final_state_dict"][key] + 5e-5  # 9,216 entries > 0.1% of them
    raw["final_state_dict"]["patch_embed.proj.bias"][0] += 1e-3
    raw["full_recipe_lr_per_epoch_T300"][150] *= 1 + 1e-12
    bad = tmp_path / "perturbed.pt"
    torch.save(raw, bad)
    rc, out, err = _run([bad], capsys)
    assert rc == 1
    reason = out.rstrip().splitlines()[-1]
    assert reason.startswith("FAIL: ")
    assert "loss at step 5 (epoch 2) deviates 5.0" in reason
    assert "learning rate in epoch 2 is" in reason
    assert "99.9th percentile" in reason
    assert "at the maximum, in patch_embed.proj.bias" in reason
    assert "full recipe (T_max 300, 301 epochs): learning rate in epoch 150" in reason


@pytest.mark.parametrize(("key", "value", "named"), [
    ("loss_rel", 2e-5, "loss at step"), ("loss_rel", 5e-6, None),
    ("weight_max", 3e-4, "at the maximum"), ("weight_max", 1e-4, None),
    ("weight_p999", 2e-5, "99.9th percentile"), ("weight_p999", 5e-6, None),
])
def test_each_check_fails_just_outside_its_tolerance_and_passes_inside(shared, shared_replay, key, value, named):
    """The same replay against the file's figures moved by ``value``: the verdict flips at the README's tolerance."""
    import dataclasses

    losses, final = list(shared.losses), dict(shared.final_state_dict)
    if key == "loss_rel":
        # Ours is within 2.2e-7 of upstream's: moving upstream's value by `value` moves the deviation to about it.
        losses[3] = shared_replay.losses[3] * (1 + value)
    elif key == "weight_max":
        k = "patch_embed.proj.weight"
        final[k] = shared_replay.final_state_dict[k].clone()
        final[k].view(-1)[7] += value
    else:
        k = "layer3.blocks.0.mlp.mlp.0.weight"  # 96 x 384 entries > 0.1% of all
        final[k] = shared_replay.final_state_dict[k] + value
    moved = dataclasses.replace(shared, losses=losses, final_state_dict=final)
    report = T.compare(moved, shared_replay, {t: v for t, v in shared.full_schedules.items()})
    if named is None:
        assert report["passed"], report["failures"]
    else:
        assert not report["passed"] and any(named in f for f in report["failures"]), report["failures"]


@pytest.mark.slow
def test_the_recipe_is_read_from_the_file(shared_file, tmp_path, capsys):
    """Recorded with eta_min = lr x 0.01; a file that says 0.02 replays a different schedule, which fails."""
    raw = _raw(shared_file)
    raw["recipe"]["eta_min_factor"] = 0.02
    wrong = tmp_path / "eta_min.pt"
    torch.save(raw, wrong)
    rc, out, _ = _run([wrong], capsys)
    assert rc == 1
    assert "scheduler.scheduler.eta_min=8.000000000000001e-06" in out
    reason = out.rstrip().splitlines()[-1]
    assert reason.startswith("FAIL: ") and "learning rate in epoch 3 is" in reason


@pytest.mark.parametrize(("overrides", "named"), [
    (["loss=l1"], "loss at step 0 (epoch 0) deviates 0.5 relative"),       # the missing x2 scale
    (["optimizer.lr=0.00041"], "learning rate in epoch 0 is 0.00041"),
])
@pytest.mark.slow
def test_a_wrong_recipe_detail_fails_naming_it(shared_file, overrides, named, capsys):
    rc, out, _ = _run([shared_file, *overrides], capsys)
    assert rc == 1
    reason = out.rstrip().splitlines()[-1]
    assert reason.startswith("FAIL: ") and named in reason, reason
    # The x2 scale is not cosmetic under AdamW: eps is not negligible next to sqrt(v) for many weights.
    assert "final weights deviate" in reason


def test_an_override_that_does_not_compose_is_one_line_naming_it(shared_file, capsys):
    rc, out, err = _run([shared_file, "optimizer.epsilon=1e-7"], capsys)
    assert rc == 2 and not out
    assert err.count("\n") == 1 and "optimizer.epsilon" in err


# ----------------------------------------------------------------------------------------------------- (c) bad files
def _tiny(tmp_path: Path, **changes) -> Path:
    """A well-formed trajectory of dehazeformer_test (2 epochs x 1 batch of 1 x 32^2) with ``changes`` applied to
    its dict (``recipe`` entries as ``recipe__<key>``); ``None`` deletes the entry."""
    from clipdehaze.models import create_generator

    torch.manual_seed(0)
    sd = create_generator("dehazeformer_test").state_dict()
    raw = {
        "recipe": {"generator": "dehazeformer_test", "batch_size": 1, "patch_size": 32, "optimizer": "adamw",
                   "lr": 4e-4, "epochs": 2, "eta_min_factor": 0.01, "loss": "l1",
                   "schedule": "cosine per epoch, T_max = epochs, eta_min = lr * eta_min_factor"},
        "init_state_dict": sd, "final_state_dict": {k: v.clone() for k, v in sd.items()},
        "hazy": torch.rand(2, 1, 1, 3, 32, 32), "gt": torch.rand(2, 1, 1, 3, 32, 32),
        "loss_per_step_upstream_scale": [0.5, 0.4], "lr_per_epoch": [4e-4, 2.02e-4],
    }
    for key, value in changes.items():
        where, k = (raw["recipe"], key.split("__", 1)[1]) if key.startswith("recipe__") else (raw, key)
        if value is None:
            del where[k]
        else:
            where[k] = value
    path = tmp_path / "tiny.pt"
    torch.save(raw, path)
    return path


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled",))


@pytest.mark.parametrize(("changes", "named"), [
    ({"hazy": None, "lr_per_epoch": None}, "it lacks hazy, lr_per_epoch"),
    ({"recipe": "dehazeformer_t"}, "'recipe' is a str, not a dict"),
    ({"recipe__lr": None}, "the recipe lacks lr"),
    ({"recipe__optimizer": "sgd"}, "recipe.optimizer is 'sgd'; it must be one the replay knows: 'adamw', 'adam'"),
    ({"recipe__generator": "dehazeformer_t trainer.max_epochs=1"}, "recipe.generator is 'dehazeformer_t trainer."),
    ({"recipe__loss": "l2"}, "recipe.loss is 'l2'"),
    ({"recipe__schedule": "step"}, "recipe.schedule is 'step'"),
    ({"recipe__epochs": 2.5}, "recipe.epochs is 2.5; it must be a positive integer"),
    ({"recipe__lr": float("nan")}, "recipe.lr is nan"),
    ({"recipe__eta_min_factor": 2}, "recipe.eta_min_factor is 2"),
    ({"hazy": torch.rand(2, 1, 1, 3, 48, 48)}, "'hazy' has shape (2, 1, 1, 3, 48, 48); the recipe's batch 1 and "
                                               "patch 32 need (epochs, batches, 1, 3, 32, 32)"),
    ({"gt": torch.rand(2, 1, 1, 3, 32, 32) * 2}, "'gt' must hold finite images in [0, 1]"),
    ({"gt": torch.rand(3, 1, 1, 3, 32, 32)}, "'hazy' (2, 1, 1, 3, 32, 32) and 'gt' (3, 1, 1, 3, 32, 32)"),
    ({"loss_per_step_upstream_scale": [0.5]}, "'loss_per_step_upstream_scale' holds 1 values; the 2 epochs x 1 "
                                              "batches of 'hazy' need 2, one per step"),
    ({"lr_per_epoch": ["4e-4", 1e-4]}, "'lr_per_epoch' must be a list of finite numbers"),
    ({"final_state_dict": {"w": torch.zeros(1)}}, "'init_state_dict' and 'final_state_dict' hold different"),
    ({"init_state_dict": [1, 2]}, "'init_state_dict' must be a non-empty state_dict"),
    ({"full_recipe_lr_per_epoch_T300": [4e-4] * 300}, "'full_recipe_lr_per_epoch_T300' holds 300 values; "
                                                       "T_max 300 means 301 epochs"),
])
def test_a_malformed_trajectory_is_one_line_naming_the_file_and_the_entry(tmp_path, capsys, changes, named):
    path = _tiny(tmp_path, **changes)
    rc, out, err = _run([path], capsys)
    assert rc == 2 and not out
    assert err.startswith(f"error: {path}: ") and err.count("\n") == 1, err
    assert named in err, err


@pytest.mark.parametrize("content", ["missing", "empty", "text", "raw pickle", "torch.save pickle", "truncated",
                                     "flipped", "list"])
def test_an_unreadable_file_is_one_line_naming_it(tmp_path, capsys, content):
    path = tmp_path / "trajectory.pt"
    if content == "empty":
        path.write_bytes(b"")
    elif content == "text":
        path.write_text("not a torch file\n")
    elif content == "raw pickle":
        path.write_bytes(pickle.dumps({"recipe": _Payload()}))
    elif content == "torch.save pickle":
        torch.save({"recipe": _Payload()}, path)
    elif content == "truncated":
        torch.save({"hazy": torch.rand(64, 64)}, path)
        path.write_bytes(path.read_bytes()[:-200])
    elif content == "flipped":
        torch.save({"hazy": torch.zeros(64, 64)}, path)
        data = bytearray(path.read_bytes())
        at = data.index(bytes(4096))  # inside the tensor's bytes
        data[at:at + 8] = b"\xff" * 8
        path.write_bytes(bytes(data))
    elif content == "list":
        torch.save([1, 2, 3], path)
    rc, out, err = _run([path], capsys)
    assert rc == 2 and not out and "unpickled" not in out + err
    assert err.startswith(f"error: {path}: ") and err.count("\n") == 1, err
    expected = {"missing": "no such trajectory file", "empty": "not a torch.save archive",
                "text": "not a torch.save archive", "raw pickle": "not a torch.save archive",
                "torch.save pickle": "refusing to unpickle arbitrary objects",
                "truncated": "not a torch.save archive (empty, truncated", "flipped": "fails its CRC-32 check",
                "list": "holds a list, not a trajectory dict"}[content]
    assert expected in err


def test_initial_weights_of_another_generator_are_one_line_naming_the_file(tmp_path, capsys):
    from clipdehaze.models import create_generator

    other = create_generator("dehazeformer_t").state_dict()
    path = _tiny(tmp_path, init_state_dict=other, final_state_dict=other)
    rc, out, err = _run([path], capsys)
    assert rc == 2 and not out
    assert err.startswith(f"error: {path}: 'init_state_dict' does not load strict into our dehazeformer_test")
    assert err.count("\n") == 1


# ----------------------------------------------------------------------------------------------------- (d) full schedule
def test_the_full_recipe_schedule_is_upstreams_exactly(shared):
    """Our config path with trainer.max_epochs = 301 and T_max = 300 gives upstream's 301 learning rates, bit for
    bit; upstream's eta_min is lr * 1e-2, and lr / 100 (another float) is not exact."""
    upstream = shared.full_schedules[UPSTREAM_EPOCHS]
    assert len(upstream) == UPSTREAM_EPOCHS + 1 and upstream[0] == UPSTREAM_LR
    assert T.full_schedule(shared, UPSTREAM_EPOCHS) == upstream
    lr_over_100 = T.full_schedule(shared, UPSTREAM_EPOCHS, [f"scheduler.scheduler.eta_min={UPSTREAM_LR / 100!r}"])
    assert UPSTREAM_LR / 100 != UPSTREAM_LR * 1e-2 and lr_over_100 != upstream
    assert max(abs(a - b) for a, b in zip(lr_over_100, upstream)) < 1e-18


def test_the_full_recipe_schedule_is_the_closed_form_cosine(tmp_path):
    """Without shared/: 301 epochs, epoch e at eta_min + (lr - eta_min)(1 + cos(pi e / 300)) / 2."""
    tiny = T.load_trajectory(_tiny(tmp_path, recipe__lr=UPSTREAM_LR))
    lrs = T.full_schedule(tiny, UPSTREAM_EPOCHS)
    eta_min = UPSTREAM_LR * 1e-2
    expected = [eta_min + (UPSTREAM_LR - eta_min) * (1 + math.cos(math.pi * e / UPSTREAM_EPOCHS)) / 2
                for e in range(UPSTREAM_EPOCHS + 1)]
    assert len(lrs) == UPSTREAM_EPOCHS + 1
    assert max(abs(a - b) for a, b in zip(lrs, expected)) < 1e-18
    assert lrs[0] == UPSTREAM_LR


def test_lightnings_epoch_rule_is_what_the_trainer_does(tmp_path):
    """The full-schedule check applies Lightning's per-epoch stepping to configure_optimizers' scheduler; trainer.fit
    (one step per epoch) gives the same learning rates, bit for bit."""
    tiny = T.load_trajectory(_tiny(tmp_path))
    assert T.full_schedule(tiny, 6, through_trainer=True) == T.full_schedule(tiny, 6)


@pytest.mark.slow
def test_the_full_recipe_schedule_through_the_trainer(shared):
    """301 epochs of trainer.fit (one step each, on the tiny DehazeFormer: the schedule does not depend on the
    network) reproduce upstream's learning rates exactly."""
    lrs = T.full_schedule(shared, UPSTREAM_EPOCHS, ["model=dehazeformer_test"], through_trainer=True)
    assert lrs == shared.full_schedules[UPSTREAM_EPOCHS]
