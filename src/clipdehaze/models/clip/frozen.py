"""FrozenCLIP: one frozen open_clip model serving every CLIP-conditioned generator.

The open_clip model is held as a plain attribute, not a registered submodule, so a LightningModule that owns a
``FrozenCLIP`` has no CLIP keys in its ``state_dict`` (checkpoints stay small and load with ``strict=True``),
no CLIP parameters in ``parameters()`` (no optimizer ever sees them), and ``.train()`` never switches CLIP out
of eval mode. ``_apply`` is overridden so ``.to(device)``, ``.cuda()``, ``.half()``, ``.double()`` still move it.
The prior is rebuilt from its (Hydra) config, never restored from a training checkpoint.

Images are float RGB in [0, 1], (B, 3, H, W). Preprocessing is done on tensors (differentiable):

* global embeddings use CLIP's own recipe: bicubic antialiased resize of the short side to ``image_size``,
  centre crop, clamp to [0, 1] (as PIL's uint8 output is), normalise with the weights' mean/std (OpenAI's for
  OpenAI/OpenCLIP tags and for local or random weights);
* dense features see the whole image (no crop), resized as described in :mod:`.density`.

Weights (``model_id`` names architecture + weights, and keys every cache):

* ``pretrained="openai"`` (an open_clip tag): taken from the local cache (Hugging Face hub cache, or
  ``~/.cache/clip`` for URL downloads, or ``cache_dir``) without touching the network. If absent, they are
  downloaded only when the network is usable; offline (``HF_HUB_OFFLINE=1`` or host unreachable) a
  :class:`MissingWeightsError` says at once which weights are missing and how to provide them, instead of
  open_clip's ~45 s of retries.
* ``checkpoint="/path/weights.{pt,bin,safetensors}"``: a local file (``clip=local``); its sha256 is in
  ``model_id``.
* neither: seeded random weights (``tiny_random``; ``seed`` is in ``model_id``) with a one-line warning, so
  demo numbers are never mistaken for CLIP-guided results.

Text features and zero-shot: see :mod:`.prompts`. ``text_feature`` is MixCLDehazeNet's conditioning: the text
embedding of the zero-shot argmax class (``soft=True``: the probability-weighted mixture of class embeddings,
renormalised to unit length so the generator sees the same input scale either way).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import Tensor

from clipdehaze.models.clip.density import (
    DensityOptions,
    WindowLayout,
    backbone_stride,
    dense_kind,
    resolve_method,
    resized_hw,
    resnet_dense,
    upsample_density,
    vit_dense,
)
from clipdehaze.models.clip.prompts import PromptSet, as_plain, options_from_mapping, resolve_prompt_sets
from clipdehaze.models.layers import without_autocast

log = logging.getLogger(__name__)

CLIP_INPUTS = ("text_feature", "density_map", "image_embedding", "dense_features", "image_encoder")
"""Names a generator may list in its ``clip_inputs``; see :meth:`FrozenCLIP.generator_inputs`."""

_CONFIG_DIR = Path(__file__).parent / "configs"
BUILTIN_MODEL_CONFIGS = (_CONFIG_DIR / "clipdehaze_tiny.json",)
"""Our own open_clip architectures, registered under their file stem (``clipdehaze_tiny``)."""

_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


class MissingWeightsError(RuntimeError):
    """Pretrained CLIP weights are neither cached nor downloadable; the message says how to provide them."""


def register_builtin_configs() -> None:
    """Register :data:`BUILTIN_MODEL_CONFIGS` with open_clip (idempotent)."""
    known = set(open_clip.list_models())
    for path in BUILTIN_MODEL_CONFIGS:
        if path.stem not in known:
            open_clip.add_model_config(path)


# ----------------------------------------------------------------------------------------------------- weights


def _hf_hub_cache(cache_dir: str | None) -> Path:
    """The hub cache huggingface_hub would use, read from the environment *now* (its constants are frozen at
    import, so a test or a launcher that sets HF_HOME later would otherwise be ignored)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def _url_cache(cache_dir: str | None) -> Path:
    # open_clip's URL downloads ignore XDG and always go to ~/.cache/clip unless cache_dir is given.
    return Path(cache_dir).expanduser() if cache_dir else Path(os.path.expanduser("~/.cache/clip"))


def _hf_files(tag_cfg: Mapping[str, Any]) -> tuple[str, list[str]] | None:
    """(repo id, candidate file names) of a tag's hub weights, safetensors first (as open_clip tries them)."""
    hub = tag_cfg.get("hf_hub")
    if not hub or not open_clip.pretrained.has_hf_hub():
        return None
    repo, filename = os.path.split(hub)  # "org/repo/" (default file name) or "org/repo/file"
    filename = filename or HF_WEIGHTS_NAME
    names = [filename]
    if filename == HF_WEIGHTS_NAME:
        names.insert(0, HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return repo, names


def _find_cached_weights(tag_cfg: Mapping[str, Any], cache_dir: str | None) -> str | None:
    files = _hf_files(tag_cfg)
    if files is not None:
        from huggingface_hub import try_to_load_from_cache

        repo, names = files
        for name in names:
            hit = try_to_load_from_cache(repo, name, cache_dir=_hf_hub_cache(cache_dir))
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    url = tag_cfg.get("url")
    if url:
        target = _url_cache(cache_dir) / os.path.basename(url)
        if target.is_file():
            # Checks the sha256 embedded in the URL; returns without network when the file is intact.
            return open_clip.pretrained.download_pretrained_from_url(url, cache_dir=str(_url_cache(cache_dir)))
    return None


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """TCP connect within ``timeout``; DNS runs in a daemon thread because getaddrinfo ignores socket timeouts."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def _download_blocker(tag_cfg: Mapping[str, Any]) -> str | None:
    """Why a download cannot work right now, or None to go ahead."""
    import huggingface_hub.constants as hf_constants

    env_offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    if env_offline or hf_constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1 is set"
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return None  # a direct probe says nothing about a proxy; let the download itself decide
    if _hf_files(tag_cfg) is not None:
        host = urllib.parse.urlparse(hf_constants.ENDPOINT).hostname or "huggingface.co"
    else:
        host = urllib.parse.urlparse(tag_cfg.get("url", "")).hostname
    if host and not _reachable(host):
        return f"{host} is unreachable (no network)"
    return None


def _missing_message(model_name: str, tag: str, tag_cfg: Mapping[str, Any], cache_dir: str | None,
                     reason: str) -> str:
    where = []
    files = _hf_files(tag_cfg)
    if files is not None:
        where.append(f"the Hugging Face hub cache {_hf_hub_cache(cache_dir)} (repo {files[0]}, file "
                     f"{' or '.join(files[1])})")
    if tag_cfg.get("url"):
        where.append(f"{_url_cache(cache_dir) / os.path.basename(tag_cfg['url'])}")
    quick = " clip.quick_gelu=true" if tag_cfg.get("quick_gelu") else ""
    return (
        f"CLIP weights {model_name!r} pretrained={tag!r} are not in the local cache and cannot be downloaded: "
        f"{reason}.\nProvide them in one of two ways:\n"
        f"  1. run once with network access (HF_HUB_OFFLINE unset) to fill the cache: {' or '.join(where)};\n"
        f"  2. point at a local weights file: clip=local clip.model_name={model_name}{quick} "
        f"clip.checkpoint=/path/to/weights (.pt, .bin or .safetensors)."
    )


def _file_sha256(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _resolve_weights(model_name: str, pretrained: str | None, checkpoint: str | None, seed: int,
                     cache_dir: str | None) -> tuple[str | None, str, dict[str, Any]]:
    """-> (local weights file or None for random, weights part of model_id, open_clip tag config or {})."""
    if pretrained and checkpoint:
        raise ValueError(f"give pretrained (a tag) OR checkpoint (a file), not both: {pretrained!r}, {checkpoint!r}")
    if pretrained and os.path.isfile(os.path.expanduser(pretrained)):
        checkpoint, pretrained = pretrained, None  # open_clip also accepts a path as `pretrained`
    if checkpoint:
        path = os.path.abspath(os.path.expanduser(checkpoint))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"CLIP checkpoint not found: {path}")
        return path, f"file({path},sha256={_file_sha256(path)[:16]})", {}
    if not pretrained:
        return None, f"random(seed={seed})", {}
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ValueError(f"{pretrained!r} is neither a weights file nor an open_clip tag of {model_name!r} "
                         f"(tags: {tags})")
    path = _find_cached_weights(tag_cfg, cache_dir)
    if path is None:
        reason = _download_blocker(tag_cfg)
        if reason is not None:
            raise MissingWeightsError(_missing_message(model_name, pretrained, tag_cfg, cache_dir, reason))
        try:
            path = open_clip.pretrained.download_pretrained(tag_cfg, cache_dir=cache_dir)
        except Exception as e:  # noqa: BLE001 - any download failure gets the same actionable message
            raise MissingWeightsError(_missing_message(model_name, pretrained, tag_cfg, cache_dir,
                                                       f"download failed ({type(e).__name__}: {e})")) from e
    return path, pretrained, dict(tag_cfg)


# ------------------------------------------------------------------------------------------------------ module


@dataclass(frozen=True)
class TextFeatureOptions:
    """Which prompt set picks ``text_feature`` and whether the pick is hard (argmax) or soft (mixture)."""

    prompt_set: str = "domain"
    soft: bool = False

    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | None) -> "TextFeatureOptions":
        return options_from_mapping(cls, options, "text_feature")


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _square(size: Any) -> int:
    if isinstance(size, Sequence):
        if len(set(size)) != 1:
            raise ValueError(f"only square CLIP inputs are supported, got image_size={tuple(size)}")
        return int(size[0])
    return int(size)


class FrozenCLIP(nn.Module):
    """A frozen open_clip model with tensor preprocessing, prompt sets, zero-shot outputs and density maps.

    Args:
        model_name: open_clip architecture (``ViT-B-32``, ``RN50``, ``clipdehaze_tiny`` ...).
        pretrained: open_clip weights tag (``openai``); None with ``checkpoint`` None means random weights.
        checkpoint: local weights file, used instead of a tag (``clip=local``).
        image_size: CLIP input size; None keeps the architecture's (224 for the OpenAI models).
        prompts: prompt sets (see :func:`.prompts.resolve_prompt_sets`); None: domain, weather, haze_level.
        text_feature: :class:`TextFeatureOptions` fields, e.g. ``{"prompt_set": "domain", "soft": False}``.
        density: :class:`.density.DensityOptions` fields.
        quick_gelu: force QuickGELU; None: as the weights tag requires (True for OpenAI weights).
        seed: seed of random weights (ignored when weights are loaded).
        cache_dir: where pretrained weights are looked up / downloaded; None: the hub / ``~/.cache/clip`` caches.
        warn_random: log a warning when the weights are random.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = None,
        checkpoint: str | None = None,
        image_size: int | None = None,
        prompts: Mapping[str, Any] | Sequence[str] | None = None,
        text_feature: Mapping[str, Any] | None = None,
        density: Mapping[str, Any] | None = None,
        quick_gelu: bool | None = None,
        seed: int = 0,
        cache_dir: str | None = None,
        warn_random: bool = True,
    ) -> None:
        super().__init__()
        # Configuration errors first: they should not cost a model build (or a download).
        self.prompt_sets: dict[str, PromptSet] = resolve_prompt_sets(prompts)
        self.text_options = TextFeatureOptions.from_dict(as_plain(text_feature))
        self.density_options = DensityOptions.from_dict(as_plain(density))
        if self.density_options.prompt_set in self.prompt_sets:
            self.prompt_set(self.density_options.prompt_set).index(self.density_options.positive)
        register_builtin_configs()
        arch = open_clip.get_model_config(model_name)
        if arch is None:
            raise ValueError(f"unknown open_clip model {model_name!r}; known: {open_clip.list_models()}")
        weights_path, weights_id, tag_cfg = _resolve_weights(model_name, pretrained, checkpoint, seed, cache_dir)
        if quick_gelu is None:
            quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        native = _square(arch["vision_cfg"]["image_size"])
        kwargs: dict[str, Any] = {"force_quick_gelu": quick_gelu}
        if image_size is not None and int(image_size) != native:
            kwargs["force_image_size"] = int(image_size)
        # open_clip logs its own "initialized randomly" on the root logger; ours below replaces it (one line, and
        # none with warn_random=False). Random weights are seeded without disturbing the caller's RNG.
        quiet = _DropMessage("No pretrained weights loaded")
        logging.getLogger().addFilter(quiet)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = open_clip.create_model(model_name, pretrained=weights_path, **kwargs)
        finally:
            logging.getLogger().removeFilter(quiet)
        model.eval().requires_grad_(False)
        object.__setattr__(self, "_clip", model)  # deliberately NOT a submodule: see the module docstring
        if weights_path is None and warn_random:
            log.warning("CLIP prior %s (seed %d): its prior is RANDOM (untrained weights); outputs conditioned on it "
                        "are demo numbers, not CLIP-guided results.", model_name, seed)

        self.model_name = model_name
        self.image_size = _square(model.visual.image_size)
        self.embed_dim = int(model.visual.output_dim)
        self.mean = tuple(tag_cfg.get("mean", OPENAI_DATASET_MEAN))
        self.std = tuple(tag_cfg.get("std", OPENAI_DATASET_STD))
        arch_hash = hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:8]
        gelu = ",quickgelu" if quick_gelu and "quickgelu" not in model_name else ""
        self.model_id = f"{model_name}[{arch_hash}{gelu}]@{self.image_size}px:{weights_id}"

        self._dense_kind = dense_kind(model.visual)
        self.density_method = resolve_method(self.density_options.method, self._dense_kind)
        self.density_size = max(self.density_options.size or 2 * self.image_size,
                                self.image_size if self.density_method == "windows" else 0)
        self._tokenizer = open_clip.get_tokenizer(model_name)
        self._text_cache: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}

    # -- frozen-module plumbing -------------------------------------------------------------------------------

    @property
    def open_clip_model(self) -> nn.Module:
        """The wrapped open_clip model (frozen, eval mode, not a submodule)."""
        return self._clip

    def _apply(self, fn, recurse: bool = True):
        self._clip._apply(fn)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> "FrozenCLIP":
        super().train(mode)
        self._clip.eval()  # frozen prior: BatchNorm statistics (ResNet towers) and dropout never change
        return self

    @property
    def device(self) -> torch.device:
        return self._clip.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self._clip.logit_scale.dtype

    def extra_repr(self) -> str:
        return f"model_id={self.model_id!r}, density={self.density_method}@{self.density_size}px"

    def signature(self) -> dict[str, Any]:
        """Everything that determines this prior's outputs, as plain data (the cache key's source)."""
        return {
            "model_id": self.model_id,
            "mean": self.mean,
            "std": self.std,
            "prompts": {name: ps.digest for name, ps in sorted(self.prompt_sets.items())},
            "text_feature": asdict(self.text_options),
            "density": {**self.density_options.as_dict(), "method": self.density_method, "size": self.density_size},
        }

    # -- preprocessing ----------------------------------------------------------------------------------------

    def _exact(self):
        """Autocast off: the prior computes in its own dtype under any trainer precision, so live outputs equal the
        cached ones (computed outside autocast) and zero-shot logits, cosines scaled by up to 100, keep their digits.
        """
        return without_autocast(self.device.type)

    def _prepare(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"expected float RGB images (B, 3, H, W) in [0, 1], got {tuple(x.shape)} {x.dtype}")
        return x.to(device=self.device, dtype=self.dtype)

    def _normalise(self, x: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x.clamp(0, 1) - mean) / std

    @staticmethod
    def _resize(x: Tensor, hw: tuple[int, int]) -> Tensor:
        if tuple(x.shape[-2:]) == tuple(hw):
            return x
        return F.interpolate(x, size=hw, mode="bicubic", antialias=True, align_corners=False)

    def _global_pixels(self, x: Tensor) -> Tensor:
        """CLIP's Resize(short side) + CenterCrop, on tensors (torchvision's int() and round() conventions)."""
        h, w = x.shape[-2:]
        s = self.image_size
        nh, nw = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        x = self._resize(x, (nh, nw))
        top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
        return self._normalise(x[..., top:top + s, left:left + s])

    # -- global image side ------------------------------------------------------------------------------------

    def _embed(self, x: Tensor) -> Tensor:
        with self._exact():
            return F.normalize(self._clip.encode_image(self._global_pixels(self._prepare(x))), dim=-1)

    def encode_image(self, x: Tensor, grad: bool = False) -> Tensor:
        """(B, D) unit image embeddings; ``grad=True`` lets gradients flow to ``x`` (CLIP stays frozen)."""
        with torch.set_grad_enabled(grad):
            return self._embed(x).to(x.dtype)

    def image_embedding(self, x: Tensor) -> Tensor:
        """(B, D) unit global image embeddings, no gradient."""
        return self.encode_image(x, grad=False)

    # -- text side --------------------------------------------------------------------------------------------

    def prompt_set(self, name: str) -> PromptSet:
        try:
            return self.prompt_sets[name]
        except KeyError:
            raise KeyError(f"prompt set {name!r} not configured; this prior has {sorted(self.prompt_sets)}") from None

    def class_embeddings(self, prompt_set: str) -> Tensor:
        """(C, D) unit class embeddings of a prompt set, computed once per device/dtype and kept."""
        ps = self.prompt_set(prompt_set)
        key = (ps.digest, self.device, self.dtype)
        if key not in self._text_cache:
            tokens = self._tokenizer(ps.flat_prompts).to(self.device)
            with torch.no_grad(), self._exact():
                emb = F.normalize(self._clip.encode_text(tokens), dim=-1)
                emb = torch.stack([F.normalize(emb[s].mean(0), dim=-1) for s in ps.class_slices()])
            self._text_cache[key] = emb
        return self._text_cache[key]

    def _logit_scale(self, override: float | None = None) -> Tensor | float:
        return override if override is not None else self._clip.logit_scale.exp()

    def _probs(self, emb: Tensor, prompt_set: str, logit_scale: float | None = None) -> Tensor:
        """Softmax over classes of (B, D) embeddings, or of (B, D, h, w) dense features -> (B, C, h, w)."""
        text = self.class_embeddings(prompt_set)
        with self._exact():
            logits = torch.einsum("bd...,cd->bc...", emb, text)
            return (self._logit_scale(logit_scale) * logits).softmax(dim=1)

    def zero_shot(self, x: Tensor, prompt_set: str, grad: bool = False) -> Tensor:
        """(B, C) class probabilities, ``softmax(logit_scale * cos(image, class))``."""
        with torch.set_grad_enabled(grad):
            return self._probs(self._embed(x), prompt_set).to(x.dtype)

    def _pick_text(self, probs: Tensor, prompt_set: str, soft: bool) -> Tensor:
        text = self.class_embeddings(prompt_set)
        if soft:
            return F.normalize(probs @ text, dim=-1).unsqueeze(1)
        return text[probs.argmax(dim=1)].unsqueeze(1)

    def text_feature(self, x: Tensor, prompt_set: str | None = None, soft: bool | None = None) -> Tensor:
        """(B, 1, D) unit text embedding of the zero-shot class (MixCLDehazeNet), or the renormalised mixture."""
        prompt_set = prompt_set or self.text_options.prompt_set
        soft = self.text_options.soft if soft is None else soft
        with torch.no_grad():
            return self._pick_text(self._probs(self._embed(x), prompt_set), prompt_set, soft).to(x.dtype)

    # -- dense side -------------------------------------------------------------------------------------------

    def _dense(self, x: Tensor) -> tuple[Tensor, WindowLayout | None]:
        """(B, D, h, w) unit dense features in CLIP's joint space, and the window layout for ``windows``."""
        with self._exact():
            return self._dense_features(self._prepare(x))

    def _dense_features(self, x: Tensor) -> tuple[Tensor, WindowLayout | None]:
        h, w = x.shape[-2:]
        visual = self._clip.visual
        if self.density_method == "windows":
            hw = resized_hw(h, w, self.density_size)
            stride = self.density_options.window_stride or max(1, self.image_size // 2)
            layout = WindowLayout.build(*hw, window=self.image_size, stride=stride)
            crops = layout.crops(self._normalise(self._resize(x, hw)))
            emb = F.normalize(self._clip.encode_image(crops), dim=-1)
            emb = emb.reshape(x.shape[0], len(layout.tops), len(layout.lefts), -1).permute(0, 3, 1, 2)
            return emb, layout
        pixels = self._normalise(self._resize(x, resized_hw(h, w, self.density_size, backbone_stride(visual))))
        if self._dense_kind == "vit":
            feats = vit_dense(visual, pixels, self.density_method)
        else:
            feats = resnet_dense(visual, pixels)
        return F.normalize(feats, dim=1), None

    def dense_features(self, x: Tensor, grad: bool = False) -> Tensor:
        """(B, D, h, w) unit dense features (patch grid, or the window grid for ``windows``)."""
        with torch.set_grad_enabled(grad):
            return self._dense(x)[0].to(x.dtype)

    def _density_grid(self, feats: Tensor, layout: WindowLayout | None) -> Tensor:
        opts = self.density_options
        positive = self.prompt_set(opts.prompt_set).index(opts.positive)
        p = self._probs(feats, opts.prompt_set, opts.logit_scale)[:, positive:positive + 1]
        return p if layout is None else layout.to_grid(p)

    def density_grid(self, x: Tensor, grad: bool = False) -> Tensor:
        """(B, 1, h, w) P(hazy) at the dense grid: what the embedding cache stores."""
        with torch.set_grad_enabled(grad):
            return self._density_grid(*self._dense(x)).to(x.dtype)

    def density_map(self, x: Tensor, grad: bool = False) -> Tensor:
        """(B, 1, H, W) zero-shot haze density P(hazy) in [0, 1], at the input's resolution."""
        return upsample_density(self.density_grid(x, grad=grad), *x.shape[-2:])

    def cacheable_outputs(self, x: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
        """What :class:`.cache.ClipCache` stores per image, sharing one global and one dense pass, no gradient.

        ``text_feature`` (B, 1, D), ``image_embedding`` (B, D), ``zero_shot.<set>`` (B, C) for every prompt set
        (for ``names`` containing ``zero_shot``), ``density_grid`` (B, 1, h, w) (for ``density_map``).
        """
        out: dict[str, Tensor] = {}
        with torch.no_grad():
            if {"text_feature", "image_embedding", "zero_shot"} & set(names):
                emb = self._embed(x)
                if "image_embedding" in names:
                    out["image_embedding"] = emb
                if "text_feature" in names:
                    ps, soft = self.text_options.prompt_set, self.text_options.soft
                    out["text_feature"] = self._pick_text(self._probs(emb, ps), ps, soft)
                if "zero_shot" in names:
                    for name in sorted(self.prompt_sets):
                        out[f"zero_shot.{name}"] = self._probs(emb, name)
            if "density_map" in names:
                out["density_grid"] = self._density_grid(*self._dense(x))
        return {k: v.to(x.dtype) for k, v in out.items()}

    # -- the one call a LightningModule makes -----------------------------------------------------------------

    def generator_inputs(self, names: Sequence[str], x: Tensor) -> dict[str, Any]:
        """The CLIP inputs a generator asked for (its ``clip_inputs``), each computed once, no gradient.

        ``text_feature`` (B, 1, D), ``density_map`` (B, 1, H, W), ``image_embedding`` (B, D),
        ``dense_features`` (B, D, h, w); the global embedding and the dense pass are shared between names.
        ``image_encoder`` is not a tensor but :meth:`image_embedding` itself, for a generator that embeds an image
        of its own making (CLIPHaze's first pass); it is never cached and no prior control can replace it.
        """
        unknown = [n for n in names if n not in CLIP_INPUTS]
        if unknown:
            raise ValueError(f"unknown CLIP inputs {unknown}; available: {list(CLIP_INPUTS)}")
        out: dict[str, Any] = {}
        with torch.no_grad():
            if "text_feature" in names or "image_embedding" in names:
                emb = self._embed(x)
                if "image_embedding" in names:
                    out["image_embedding"] = emb.to(x.dtype)
                if "text_feature" in names:
                    ps, soft = self.text_options.prompt_set, self.text_options.soft
                    out["text_feature"] = self._pick_text(self._probs(emb, ps), ps, soft).to(x.dtype)
            if "density_map" in names or "dense_features" in names:
                feats, layout = self._dense(x)
                if "dense_features" in names:
                    out["dense_features"] = feats.to(x.dtype)
                if "density_map" in names:
                    grid = self._density_grid(feats, layout).to(x.dtype)
                    out["density_map"] = upsample_density(grid, *x.shape[-2:])
        if "image_encoder" in names:
            out["image_encoder"] = self.image_embedding
        return {n: out[n] for n in names}
