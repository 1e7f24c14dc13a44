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
