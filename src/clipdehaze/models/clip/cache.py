"""On-disk cache of per-image CLIP outputs (safetensors, never pickle).

MixCLDehazeNet precomputes one text feature per training image by hand (``clip_text.py`` writes ``.npy`` files
beside the images, and nothing notices when the images, the CLIP model or the prompts change). ``ClipCache``
makes that automatic and safe:

* **Key.** An entry is ``<cache_dir>/<signature[:16]>/<sha[:2]>/<sha>.safetensors`` where ``sha`` is the sha256
  of the image file's bytes and ``signature`` the sha256 of the prior's :meth:`FrozenCLIP.signature` (model id
  incl. weights hash or seed, prompt-set digests, text-feature and density options, normalisation) plus the
  cached names and the cache format version. A changed image, model or prompt set therefore never finds an old
  entry; it is computed afresh. Several priors can share one ``cache_dir`` (``signature.json`` in each
  sub-folder says which prior it belongs to). Moving or renaming the dataset keeps the cache valid.
* **Check.** Every read re-validates the header metadata (format, signature, content hash) and the expected
  tensors; a corrupt, truncated or mismatched file is reported by :meth:`ClipCache.check` and rebuilt by
  :meth:`ClipCache.build` / :meth:`ClipCache.entry_for` instead of being used. Writes are atomic.

What is cached per image (computed on the *full* image, as MixCLDehazeNet does):

* global things, independent of the training crop: ``text_feature`` (1, D), ``image_embedding`` (D,),
  ``zero_shot.<set>`` (C,) for every prompt set of the prior;
* the density map as its low-resolution *grid* ``density_grid`` (1, h, w) (the patch grid, or the pooled window
  grid), with ``image_hw`` (2,) the image size. A crop's map is :func:`.density.crop_density` of that grid,
  identical to cropping the full-resolution live map of the full image. (A live map of the *crop* differs a
  little: CLIP then sees less context.)

Key the cache by the *input* (hazy) image, as MixCLDehazeNet does (its features come from the hazy images).

Serving (for the data module): ``cache.sample_inputs(path, names, box=(top, left, h, w))`` returns, for one
image, the names and shapes ``FrozenCLIP.generator_inputs`` gives one batch row (``text_feature`` (1, D),
``image_embedding`` (D,), ``density_map`` (1, h, w) for the crop box), so default collation matches the live
path; the values are those of the full image (live calls on a crop see only the crop). Flips / rotations are
applied by the data module to ``density_map`` as to the image. Build the cache once before training
(``cache.build(paths)``): ``entry_for`` also fills misses lazily, but that runs CLIP inside data-loader workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from clipdehaze.models.clip.density import crop_density
from clipdehaze.models.clip.frozen import FrozenCLIP
from clipdehaze.utils.files import atomic_write

log = logging.getLogger(__name__)

CACHEABLE = ("text_feature", "image_embedding", "density_map", "zero_shot")
FORMAT = "clipdehaze-clip-cache/1"

LoaderFn = Callable[[str], Tensor]


def read_image(path: str | os.PathLike) -> Tensor:
    """(3, H, W) float32 RGB in [0, 1]."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class ClipCache:
    """Per-image CLIP outputs of one prior, on disk.

    Args:
        cache_dir: root folder (created on first write).
        prior: the :class:`FrozenCLIP` whose outputs are cached.
        names: subset of :data:`CACHEABLE`.
        loader_fn: path -> (3, H, W) float image in [0, 1] (default :func:`read_image`); used to fill misses.
    """

    def __init__(self, cache_dir: str | os.PathLike, prior: FrozenCLIP,
                 names: Sequence[str] = ("text_feature", "image_embedding", "density_map"),
                 loader_fn: LoaderFn | None = None) -> None:
        bad = [n for n in names if n not in CACHEABLE]
        if bad:
            raise ValueError(f"cannot cache {bad}: cacheable are {list(CACHEABLE)} (dense_features are not cached: "
                             "a crop's features are not a crop of the full image's)")
        self.prior = prior
        self.names = tuple(sorted(set(names)))
        self.loader_fn = loader_fn or read_image
        self.signature = {**prior.signature(), "names": list(self.names), "format": FORMAT}
        self.signature_hash = hashlib.sha256(json.dumps(self.signature, sort_keys=True).encode()).hexdigest()
        self.root = Path(cache_dir) / self.signature_hash[:16]
        self._sha_memo: dict[tuple, str] = {}

    # -- keys ------------------------------------------------------------------------------------------------

    def content_hash(self, path: str | os.PathLike) -> str:
        """sha256 of the file's bytes, memoised per (path, inode, size, mtime) so epochs don't re-hash."""
        p = os.path.abspath(path)
        st = os.stat(p)
        key = (p, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in self._sha_memo:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            self._sha_memo[key] = h.hexdigest()
        return self._sha_memo[key]

    def entry_path(self, path: str | os.PathLike) -> Path:
        sha = self.content_hash(path)
        return self.root / sha[:2] / f"{sha}.safetensors"

    def _expected_keys(self) -> set[str]:
        keys = {"image_hw"}
        if "text_feature" in self.names:
            keys.add("text_feature")
        if "image_embedding" in self.names:
            keys.add("image_embedding")
        if "density_map" in self.names:
            keys.add("density_grid")
        if "zero_shot" in self.names:
            keys |= {f"zero_shot.{n}" for n in self.prior.prompt_sets}
        return keys

    # -- read ------------------------------------------------------------------------------------------------

    def _read(self, path: str | os.PathLike) -> tuple[dict[str, Tensor] | None, str | None]:
        """(entry, None) for a valid entry, else (None, why not)."""
        sha = self.content_hash(path)
        file = self.root / sha[:2] / f"{sha}.safetensors"
        if not file.is_file():
            return None, "missing (new or changed image, or a different prior)"
        try:
            with safe_open(str(file), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    return None, f"stale: format {meta.get('format')!r} != {FORMAT!r}"
                if meta.get("signature") != self.signature_hash:
                    return None, f"stale: written for prior {meta.get('model_id')!r} with another signature"
                if meta.get("content_sha256") != sha:
                    return None, "stale: written for other image bytes"
                keys = set(f.keys())
                if keys != self._expected_keys():
                    return None, f"stale: holds {sorted(keys)}, expected {sorted(self._expected_keys())}"
                return {k: f.get_tensor(k) for k in sorted(keys)}, None
        except (SafetensorError, OSError, ValueError) as e:
            return None, f"corrupt: {type(e).__name__}: {e}"

    def lookup(self, path: str | os.PathLike) -> dict[str, Tensor] | None:
        """The valid entry of an image, or None (missing, stale or corrupt: see :meth:`check`)."""
        return self._read(path)[0]

    def check(self, path: str | os.PathLike) -> str | None:
        """None when the image has a valid entry, else the reason it would be (re)built."""
        return self._read(path)[1]

    # -- write -----------------------------------------------------------------------------------------------

    def compute(self, image: Tensor) -> dict[str, Tensor]:
        """Entry tensors of one (3, H, W) image."""
        x = image.unsqueeze(0).float()
        out = self.prior.cacheable_outputs(x, self.names)
        entry = {k: v[0].float().cpu().contiguous() for k, v in out.items()}
        entry["image_hw"] = torch.tensor(image.shape[-2:], dtype=torch.int64)
        return entry

    def _store(self, path: str | os.PathLike, entry: dict[str, Tensor]) -> None:
        sha = self.content_hash(path)
        file = self.root / sha[:2] / f"{sha}.safetensors"
        file.parent.mkdir(parents=True, exist_ok=True)
        sig_file = self.root / "signature.json"
        if not sig_file.is_file():
            atomic_write(sig_file, json.dumps(self.signature, indent=2, sort_keys=True), durable=False)
        meta = {"format": FORMAT, "signature": self.signature_hash, "content_sha256": sha,
                "model_id": self.prior.model_id, "source": os.path.abspath(path)}
        fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".tmp", dir=file.parent)
        os.close(fd)
        try:
            save_file(entry, tmp, metadata=meta)
            os.replace(tmp, file)  # readers (other workers, other ranks) never see a half-written entry
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def build(self, paths: Iterable[str | os.PathLike], loader_fn: LoaderFn | None = None,
              device: torch.device | str | None = None) -> dict[str, int]:
        """Make sure every image has a valid entry; -> counts of ``reused``, ``built`` and ``replaced`` (stale or
        corrupt entries that were recomputed). ``device``: move the prior there first (the device its module trains
        on), so entries are computed where the module runs; None leaves it where it is."""
        if device is not None:
            self.prior.to(device)
        load = loader_fn or self.loader_fn
        counts = {"reused": 0, "built": 0, "replaced": 0}
        for p in paths:
            entry, reason = self._read(p)
            if entry is not None:
                counts["reused"] += 1
                continue
            if not reason.startswith("missing"):
                log.info("rebuilding CLIP cache entry of %s: %s", p, reason)
            self._store(p, self.compute(load(str(p))))
            counts["built" if reason.startswith("missing") else "replaced"] += 1
        log.info("CLIP cache %s (%s): %s", self.root, self.prior.model_id, counts)
        return counts

    def entry_for(self, path: str | os.PathLike, loader_fn: LoaderFn | None = None) -> dict[str, Tensor]:
        """The entry of an image, computing and storing it first when missing or stale."""
        entry, _ = self._read(path)
        if entry is None:
            entry = self.compute((loader_fn or self.loader_fn)(str(path)))
            self._store(path, entry)
        return entry

    # -- serve -----------------------------------------------------------------------------------------------

    def sample_inputs(self, path: str | os.PathLike, names: Sequence[str],
                      box: tuple[int, int, int, int] | None = None,
                      out_hw: tuple[int, int] | None = None) -> dict[str, Tensor]:
        """One image's generator inputs from the cache (shapes of one row of ``generator_inputs``).

        ``box = (top, left, height, width)`` is the crop the data module took from the full image (None: the
        whole image); ``out_hw`` resizes the density crop (default: the box size).
        """
        entry = self.entry_for(path)
        out = {}
        for name in names:
            if name == "density_map" and "density_grid" in entry:
                hw = tuple(int(v) for v in entry["image_hw"])
                out[name] = crop_density(entry["density_grid"], hw, box or (0, 0, *hw), out_hw)
            elif name in ("text_feature", "image_embedding") and name in entry:
                out[name] = entry[name]
            else:
                raise KeyError(f"{name!r} is not in this cache (cached: {list(self.names)}); compute it live with "
                               "FrozenCLIP.generator_inputs")
        return out
