"""Per-image cost of the CLIP prior, live vs from the embedding cache.

For every model: ``n_images`` generated ``size`` x ``size`` PNGs; live = one ``FrozenCLIP`` call per image
(batch 1: density map, image embedding, text feature); cached = ``ClipCache.sample_inputs`` of the same image
(safetensors read + density crop; file hashes memoised, as in a data-loader worker after its first epoch).
Also reported: building one entry and hashing one file. Models default to random weights (no download);
``name:tag`` uses cached pretrained weights.

    python -m clipdehaze.models.clip.bench --models clipdehaze_tiny ViT-B-32 --n-images 8 --size 256 [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from clipdehaze.models.clip.cache import ClipCache, read_image
from clipdehaze.models.clip.frozen import FrozenCLIP

OPS = ("density_map", "image_embedding", "text_feature")


def _make_images(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """Smooth random images (upsampled low-resolution noise) so PNG sizes are realistic, not white noise."""
    g = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(n):
        low = torch.rand(1, 3, max(2, size // 16), max(2, size // 16), generator=g)
        img = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)[0]
        p = folder / f"img_{i:04d}.png"
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(p)
        paths.append(p)
    return paths


def _ms_per_item(fn: Callable[[Any], Any], items: Sequence[Any]) -> float:
    fn(items[0])  # warm-up: lazy init (text embeddings, oneDNN kernels) is not a per-image cost
    t = time.perf_counter()
    for it in items:
        fn(it)
    return 1000.0 * (time.perf_counter() - t) / len(items)


def run_clip_benchmark(models: Sequence[str] = ("clipdehaze_tiny", "ViT-B-32"), n_images: int = 8,
                       size: int = 256, device: str = "cpu") -> dict[str, Any]:
    """-> ``{"setup": {...}, "models": {model_id: {"live_ms", "cached_ms", "build_ms", "hash_ms"}}}``."""
    result: dict[str, Any] = {"setup": {"n_images": n_images, "size": size, "device": device,
                                        "torch_threads": torch.get_num_threads()}, "models": {}}
    for spec in models:
        name, _, tag = spec.partition(":")
        prior = FrozenCLIP(name, pretrained=tag or None, warn_random=False).to(device)
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            paths = _make_images(Path(tmp), n_images, size)
            images = [read_image(p)[None].to(device) for p in paths]
            live = {op: _ms_per_item(getattr(prior, op), images) for op in OPS}

            root = Path(tmp) / "cache"
            # A fresh cache object per image: its hash memo is empty, so this is the first-epoch cost.
            hash_ms = _ms_per_item(lambda p: ClipCache(root, prior, names=OPS).content_hash(p), paths)
            cache = ClipCache(root, prior, names=OPS)
            t = time.perf_counter()
            cache.build(paths)
            build_ms = 1000.0 * (time.perf_counter() - t) / n_images
            box = (0, 0, size, size)
            cached = {op: _ms_per_item(lambda p, op=op: cache.sample_inputs(p, [op], box=box), paths) for op in OPS}
        result["models"][prior.model_id] = {"live_ms": live, "cached_ms": cached, "build_ms": build_ms,
                                            "hash_ms": hash_ms}
    return result


def format_table(result: dict[str, Any]) -> str:
    s = result["setup"]
    lines = [f"CLIP prior, per image ({s['size']}x{s['size']}, batch 1, {s['device']}, "
             f"{s['torch_threads']} threads, {s['n_images']} images)",
             f"{'model':<48} {'output':<16} {'live ms':>9} {'cached ms':>10}"]
    for model_id, r in result["models"].items():
        for op in OPS:
            lines.append(f"{model_id:<48} {op:<16} {r['live_ms'][op]:>9.2f} {r['cached_ms'][op]:>10.2f}")
        lines.append(f"{model_id:<48} {'(build entry)':<16} {r['build_ms']:>9.2f} {'':>10}")
        lines.append(f"{model_id:<48} {'(sha256 file)':<16} {'':>9} {r['hash_ms']:>10.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["clipdehaze_tiny", "ViT-B-32"],
                    help="open_clip model names (random weights) or name:tag (cached pretrained weights)")
    ap.add_argument("--n-images", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (1 avoids oversubscription on a busy host)")
    ap.add_argument("--json", type=Path, help="also write the result dict here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_clip_benchmark(args.models, args.n_images, args.size, args.device)
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
