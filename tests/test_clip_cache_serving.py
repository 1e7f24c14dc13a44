"""The data module serves cached CLIP inputs, aligned with the crop / flips / rotation of the image."""

import torch

from clipdehaze.data.datasets import PairedImageDataset
from clipdehaze.data.io import load_image


class _EchoCache:
    """Stands in for ClipCache: the 'density map' is the image's red channel, the embedding its mean colour."""

    def sample_inputs(self, path, names):
        img = load_image(path)
        out = {"density_map": img[:1].clone(), "image_embedding": img.mean(dim=(1, 2))}
        return {n: out[n] for n in names}


def test_cached_density_follows_crop_and_augmentation(tiny_paired_root):
    ds = PairedImageDataset(tiny_paired_root, "train", mode="train", crop_size=32, augment=("hflip", "vflip", "rot90"))
    ds.attach_clip_cache(_EchoCache(), ("density_map", "image_embedding"))
    torch.manual_seed(0)
    for i in range(len(ds)):
        s = ds[i]
        assert s["clip"]["density_map"].shape == (1, 32, 32)
        torch.testing.assert_close(s["clip"]["density_map"], s["input"][:1])
        # Global entries are per file (full image), untouched by the crop.
        full = load_image(ds.pairs[i][0])
        torch.testing.assert_close(s["clip"]["image_embedding"], full.mean(dim=(1, 2)))


def test_clip_cache_end_to_end_with_real_prior(tmp_path, tiny_paired_root):
    from clipdehaze.data import PairedDataModule
    from clipdehaze.models.clip import ClipCache, FrozenCLIP

    prior = FrozenCLIP(model_name="clipdehaze_tiny", warn_random=False)
    cache = ClipCache(tmp_path / "clip", prior, names=("text_feature", "density_map"), loader_fn=load_image)
    dm = PairedDataModule(str(tiny_paired_root), crop_size=32, batch_size=2, num_workers=0)
    dm.attach_clip_cache(cache, ("text_feature", "density_map"))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["clip"]["text_feature"].shape == (2, 1, prior.embed_dim)
    assert batch["clip"]["density_map"].shape == (2, 1, 32, 32)
    # Same values as the prior computes live on the full test image.
    dm.setup("test")
    sample = next(iter(dm.test_dataloader()))
    live = prior.generator_inputs(["text_feature", "density_map"], sample["input"])
    torch.testing.assert_close(sample["clip"]["text_feature"], live["text_feature"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sample["clip"]["density_map"], live["density_map"], atol=1e-4, rtol=1e-3)


def test_clip_cache_cli_computes_then_reuses_then_recomputes_a_changed_image(tmp_path, capsys):
    """``clipdehaze-data clip-cache``: the first run computes every input image, the second reuses them all,
    and after one image changes only that one is computed again."""
    import numpy as np
    from PIL import Image

    from conftest import make_paired_folder

    from clipdehaze.data.clip_cache import run_clip_cache

    root = make_paired_folder(tmp_path / "data", {"train": [(40, 48)] * 3, "test": [(37, 45)] * 2})
    cache_dir = tmp_path / "cache"
    overrides = ["data=paired", f"data.root={root}", "data.num_workers=0", "model=mixcldehazenet_test",
                 "clip=tiny_random", f"paths.cache_dir={cache_dir}"]
    visits = 3 + 2 + 2  # train, val (= test split), test

    first = run_clip_cache(overrides)
    assert first == {"built": 5, "reused": visits - 5, "replaced": 0}
    assert "names: text_feature" in capsys.readouterr().out  # the model's CLIP inputs only
    entries = sorted((cache_dir / "clip").rglob("*.safetensors"))
    assert len(entries) == 5

    assert run_clip_cache(overrides) == {"built": 0, "reused": visits, "replaced": 0}

    changed = root / "train" / "hazy" / "0001.png"
    Image.fromarray(np.asarray(Image.open(changed))[::-1].copy()).save(changed)  # new content, same name
    assert run_clip_cache(overrides) == {"built": 1, "reused": visits - 1, "replaced": 0}
    assert len(sorted((cache_dir / "clip").rglob("*.safetensors"))) == 6
