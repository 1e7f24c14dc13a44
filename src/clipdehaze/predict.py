"""``clipdehaze-predict``: restore any images (no ground truth), tiling large ones so memory stays bounded.

    clipdehaze-predict ckpt_path=<run>/checkpoints/last.ckpt input=photo.jpg output=restored/
    clipdehaze-predict model=dcp input=hazy_folder/ output=dehazed/ tile=512 overlap=32
    clipdehaze-predict ... memory_budget_mb=1024      # tile=auto (default): largest tiles that fit 1 GB

Never writes into the input folder and never overwrites an input file. Outputs are ``<output>/<stem>.png``, so
inputs that share a stem (``a.jpg`` and ``a.png``) would overwrite each other: such a folder is refused before
anything is written, naming both files. Each output carries a PNG text chunk saying clipdehaze-predict wrote it;
a file already at an output path is replaced only when it carries that mark (an earlier prediction) or with
``overwrite=true``; otherwise the run stops before any work, naming the files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from clipdehaze.data.datasets import list_images
from clipdehaze.data.io import IMAGE_EXTENSIONS, ImageReadError, load_image, png_text, save_image
from clipdehaze.pipeline import module_for_inference
from clipdehaze.utils.hydra_utils import checked_overrides, config_path, register_with_hydra
from clipdehaze.utils.memory import available_memory_bytes
from clipdehaze.utils.tiling import auto_tile, check_tiling, crop_inputs, tiled_forward

log = logging.getLogger("clipdehaze.predict")
register_with_hydra()


#: The PNG text chunk that marks a file as this command's output (replaceable without overwrite=true).
MARK = {"Software": "clipdehaze-predict"}


def _inputs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise FileNotFoundError(f"input={path}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder")
        return files
    raise FileNotFoundError(f"input={path}: no such file or folder")


def _check_output(inputs: list[Path], in_root: Path, out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"output={out_dir} is an existing file; output= names the folder the restored "
                                 "images go to: pass a folder path (it is created if missing)")
    seen: dict[str, Path] = {}
    for p in inputs:
        if (other := seen.setdefault(p.stem, p)) is not p:
            raise ValueError(f"{other} and {p} would both be written to {out_dir / (p.stem + '.png')}; "
                             "rename one or predict them from separate folders")
    out = out_dir.resolve()
    src = in_root.resolve() if in_root.is_dir() else in_root.resolve().parent
    if out == src:
        raise ValueError(f"output folder {out_dir} is the input folder; choose another so no input is overwritten")
    for p in inputs:
        if (out / f"{p.stem}.png").resolve() == p.resolve():
            raise ValueError(f"refusing to overwrite input file {p}")
    existing = [d for d in (out_dir / f"{p.stem}.png" for p in inputs) if d.exists() or d.is_symlink()]
    if folders := [d for d in existing if d.is_dir()]:
        raise IsADirectoryError(f"{folders[0]} is a folder where the restored image would go; rename it or choose "
                                "another output=")
    foreign = [d for d in existing if png_text(d).get("Software") != MARK["Software"]]
    if foreign and not overwrite:
        shown = ", ".join(str(d) for d in foreign[:5]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 5 else "")
        raise FileExistsError(f"output folder {out_dir} already holds {shown}, not written by clipdehaze-predict; "
                              "pass overwrite=true to replace them, or choose another output=")


def tiling_options(cfg: DictConfig, generator) -> tuple[int | str, int, int | None]:
    """``tile`` (pixels or ``"auto"``), ``overlap`` and the memory budget in bytes (``None``: half the memory
    available when an image is restored), checked before any image is read: each bad value is refused naming
    its option."""
    tile, overlap, budget = cfg.get("tile", "auto"), cfg.get("overlap", 32), cfg.get("memory_budget_mb")
    check_tiling(tile, overlap, getattr(generator, "min_size", 16), allow_auto=True)
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0:
            raise ValueError(f"memory_budget_mb={budget!r}: must be a positive number of megabytes (or null: half "
                             "the available memory)")
        budget = int(budget * 2**20)
    return tile, overlap, budget


@torch.no_grad()
def restore(module, x: torch.Tensor, tile: int | str = "auto", overlap: int = 32,
            memory_budget: int | None = None) -> torch.Tensor:
    """Generator output for one image (1, 3, H, W), tiled; CLIP inputs come from the whole image and spatial
    ones (density maps) are cropped per tile, so tiling does not change what the prior sees.

    ``tile="auto"``: the largest tile whose inference fits ``memory_budget`` bytes (default: half the memory
    available on ``x``'s device), the whole image when it fits (:func:`clipdehaze.utils.tiling.auto_tile`)."""
    clip_inputs = module.clip_inputs(x)

    def fn(t: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
        return module.generator(t, **crop_inputs(clip_inputs, x.shape[-2:], box, t.shape[-2:]))

    min_size = getattr(module.generator, "min_size", 16)
    if tile == "auto":
        if memory_budget is None:
            memory_budget = (available_memory_bytes(x.device) or 4 * 2**30) // 2
        tile = auto_tile(fn, x, memory_budget, overlap, min_size=min_size)
    return tiled_forward(fn, x, tile=tile, overlap=overlap, min_size=min_size).clamp(0, 1)


def predict(cfg: DictConfig) -> list[Path]:
    if not cfg.get("input") or not cfg.get("output"):
        raise ValueError("pass input=<image file or folder> output=<folder>")
    in_path, out_dir = Path(cfg.input), Path(cfg.output)
    files = _inputs(in_path)
    _check_output(files, in_path, out_dir, bool(cfg.get("overwrite", False)))
    module = module_for_inference(cfg).eval()
    tile, overlap, budget = tiling_options(cfg, module.generator)
    device = torch.device(cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    module.to(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, failed = [], []
    for p in files:
        try:
            x = load_image(p)[None].to(device)
        except ImageReadError as e:
            log.error("%s", e)
            failed.append(p)
            continue
        y = restore(module, x, tile, overlap, budget)
        if nan := int(y.isnan().sum()):
            # A PNG cannot hold NaN; written, these pixels would pass for black.
            log.error("%s: the restored image has %d NaN pixel(s) (the model is numerically unstable on this input); "
                      "not written", p, nan)
            failed.append(p)
            continue
        dst = out_dir / f"{p.stem}.png"
        save_image(y[0].cpu(), dst, text=MARK)
        written.append(dst)
        log.info("%s -> %s", p, dst)
    if failed:
        raise SystemExit(f"{len(failed)} of {len(files)} input(s) unreadable or not restorable (see errors above): "
                         + ", ".join(str(p) for p in failed[:5]) + f"; {len(written)} written to {out_dir}")
    return written


@checked_overrides
@hydra.main(version_base="1.3", config_path=config_path(), config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
