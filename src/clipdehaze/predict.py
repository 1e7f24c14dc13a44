"""``clipdehaze-predict``: restore any images (no ground truth), tiling large ones so memory stays bounded.

    clipdehaze-predict ckpt_path=<run>/checkpoints/last.ckpt input=photo.jpg output=restored/
    clipdehaze-predict model=dcp input=hazy_folder/ output=dehazed/ tile=512 overlap=32
    clipdehaze-predict ... memory_budget_mb=1024      # tile=auto (default): largest tiles that fit 1 GB
    clipdehaze-predict ... metrics=no_reference compare=true tta=x8   # NIQE/BRISQUE/dark channel, hazy | restored

A progress bar shows images and the current image's tiles with ETAs, a log line per image its ETA, and a summary
line the count, time and output folder. ``metrics=`` (no-reference metrics) writes ``per_image.csv`` and
``metrics.json`` into the run folder (``clipdehaze-table`` reads it); ``compare=true`` writes hazy | restored to
``<output>/compare/<stem>.png`` and, with ``metrics=``, both images' scores to ``<output>/compare/scores.csv``.

Never writes into the input folder and never overwrites an input file. Outputs are ``<output>/<stem>.png``, so
inputs that share a stem (``a.jpg`` and ``a.png``) would overwrite each other: such a folder is refused before
anything is written, naming both files. Each output carries a PNG text chunk saying clipdehaze-predict wrote it;
a file already at an output path, ``compare/`` included, is replaced only when it carries that mark (an earlier
prediction; for ``compare/scores.csv``, its own header) or with ``overwrite=true``; otherwise the run stops before
any work, naming the files.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Callable

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from clipdehaze.artefacts import PER_IMAGE_CSV, predict_summary, write_rows_csv, write_run_results
from clipdehaze.build import module_for_inference
from clipdehaze.data.datasets import list_images
from clipdehaze.data.io import IMAGE_EXTENSIONS, ImageReadError, load_image, png_text, save_image
from clipdehaze.metrics import compute_metric, nan_reason
from clipdehaze.task import task_wrapper
from clipdehaze.utils.hydra_utils import checked_overrides, config_path, register_with_hydra
from clipdehaze.utils.memory import available_memory_bytes
from clipdehaze.utils.tiling import auto_tile, check_tiling, crop_inputs, tile_count, tiled_forward
from clipdehaze.utils.tta import self_ensemble

log = logging.getLogger("clipdehaze.predict")
register_with_hydra()


#: The PNG text chunk that marks a file as this command's output (replaceable without overwrite=true).
MARK = {"Software": "clipdehaze-predict"}
#: compare=true writes hazy | restored here (inside output=), with scores.csv when metrics= is set.
COMPARE_DIR = "compare"


def _inputs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise FileNotFoundError(f"input={path}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder")
        return files
    raise FileNotFoundError(f"input={path}: no such file or folder")


def _ours(path: Path) -> bool:
    """Whether ``path`` is an earlier output of this command: a PNG carrying :data:`MARK`, or a compare
    ``scores.csv`` (its header is ``name`` then ``<metric>_hazy`` / ``<metric>_restored`` columns)."""
    if path.suffix == ".png":
        return png_text(path).get("Software") == MARK["Software"]
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline().strip().split(",")
    except (OSError, UnicodeDecodeError):
        return False
    return header[0] == "name" and len(header) > 1 and all(c.endswith(("_hazy", "_restored")) for c in header[1:])


def _check_output(inputs: list[Path], in_root: Path, out_dir: Path, overwrite: bool, compare: bool = False,
                  scores: bool = False) -> None:
    """Refuse, before any work, an ``output=`` that would lose files: an input among the outputs, two inputs
    with one output, and files this command did not write at any path it writes (``<output>/<stem>.png``; with
    ``compare``, ``<output>/compare/<stem>.png`` and, with ``scores``, ``<output>/compare/scores.csv``) unless
    ``overwrite``."""
    for folder in (out_dir, out_dir / COMPARE_DIR) if compare else (out_dir,):
        if folder.exists() and not folder.is_dir():
            what = f"output={folder}" if folder == out_dir else f"{folder}, where compare=true writes,"
            raise NotADirectoryError(f"{what} is an existing file; output= names the folder the restored images go to "
                                     "(compare=true adds its compare/ sub-folder): pass a folder path (it is created "
                                     "if missing)")
    seen: dict[str, Path] = {}
    for p in inputs:
        if (other := seen.setdefault(p.stem, p)) is not p:
            raise ValueError(f"{other} and {p} would both be written to {out_dir / (p.stem + '.png')}; "
                             "rename one or predict them from separate folders")
    out = out_dir.resolve()
    src = in_root.resolve() if in_root.is_dir() else in_root.resolve().parent
    if out == src:
        raise ValueError(f"output folder {out_dir} is the input folder; choose another so no input is overwritten")
    if compare and (out / COMPARE_DIR).resolve() == src:
        raise ValueError(f"compare=true writes into {out_dir / COMPARE_DIR}, the input folder; choose another output= "
                         "so no input is overwritten")
    targets = [out_dir / f"{p.stem}.png" for p in inputs]
    if compare:
        targets += [out_dir / COMPARE_DIR / f"{p.stem}.png" for p in inputs]
        targets += [out_dir / COMPARE_DIR / "scores.csv"] if scores else []
    by_path = {p.resolve(): p for p in inputs}
    for d in targets:
        if (p := by_path.get(d.resolve())) is not None:
            raise ValueError(f"refusing to overwrite input file {p}")
    existing = [d for d in targets if d.exists() or d.is_symlink()]
    if folders := [d for d in existing if d.is_dir()]:
        raise IsADirectoryError(f"{folders[0]} is a folder where the restored image would go; rename it or choose "
                                "another output=")
    foreign = [d for d in existing if not _ours(d)]
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
            memory_budget: int | None = None, tta: str = "none", on_tile: Callable[[], None] | None = None,
            on_tiles: Callable[[int], None] | None = None) -> torch.Tensor:
    """Generator output for one image (1, 3, H, W), tiled; CLIP inputs come from the whole image and spatial
    ones (density maps) are cropped per tile, so tiling does not change what the prior sees. ``tta``: the
    self-ensemble of each tile (:mod:`clipdehaze.utils.tta`); ``on_tiles(n)`` is told the number of tiles once
    the tile size is known, ``on_tile()`` is called after each.

    ``tile="auto"``: the largest tile whose inference fits ``memory_budget`` bytes (default: half the memory
    available on ``x``'s device), the whole image when it fits (:func:`clipdehaze.utils.tiling.auto_tile`)."""
    clip_inputs = module.clip_inputs(x)

    def fn(t: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
        inputs = crop_inputs(clip_inputs, x.shape[-2:], box, t.shape[-2:])
        return self_ensemble(module.generator, t, tta, inputs)

    def counted(t: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
        out = fn(t, box)
        if on_tile is not None:
            on_tile()
        return out

    min_size = getattr(module.generator, "min_size", 16)
    if tile == "auto":
        if memory_budget is None:
            memory_budget = (available_memory_bytes(x.device) or 4 * 2**30) // 2
        tile = auto_tile(fn, x, memory_budget, overlap, min_size=min_size)
    if on_tiles is not None:
        on_tiles(tile_count(*x.shape[-2:], tile, overlap))
    return tiled_forward(counted, x, tile=tile, overlap=overlap, min_size=min_size).clamp(0, 1)


def _score_metrics(cfg: DictConfig):
    """The no-reference metrics ``metrics=`` asks for (None without), checked before any image is read."""
    if not cfg.get("metrics"):
        return None
    from clipdehaze.metrics import ImageQualityMetrics

    spec = OmegaConf.to_container(cfg.metrics, resolve=True)
    metric = ImageQualityMetrics(spec.pop("protocol", None), spec.pop("names", None), **spec)
    if not metric.reference_free:
        raise ValueError(f"metrics={list(metric.metric_names)}: predict has no ground truth; choose no-reference "
                         "metrics (metrics=no_reference, or metrics.names=[niqe,brisque,dark_channel])")
    return metric


def _scores(metric, image: torch.Tensor, path: Path, what: str) -> dict[str, float]:
    """The no-reference scores of one image (1, 3, H, W); a NaN score is logged with the file and the reason (too
    small, a constant image ...): it makes the mean in metrics.json null."""
    scores = {n: float(compute_metric(n, image, None, None)) for n in metric.metric_names}
    for name, value in scores.items():
        if math.isnan(value):
            log.warning("%s: %s of the %s image is NaN: %s", path, name, what, nan_reason(name, image))
    return scores


def side_by_side(left: torch.Tensor, right: torch.Tensor, gap: int = 8) -> torch.Tensor:
    """(3, H, W) hazy | restored with a white gap."""
    return torch.cat([left, torch.ones(3, left.shape[1], gap, dtype=left.dtype), right], dim=2)


class _Progress:
    """A Rich progress bar over images and over the tiles of the current image, with ETAs; one log line per image
    (with the run's ETA) where no terminal shows the bar."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        from clipdehaze.utils.progress import ProgressLog

        self.log = ProgressLog(total, log, every_s=0)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn())
        self.images = self.bar.add_task("images", total=total)
        self.tiles = self.bar.add_task("tiles", total=1)

    def __enter__(self) -> "_Progress":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def new_image(self, n_tiles: int) -> None:
        self.bar.reset(self.tiles, total=n_tiles)

    def tile_done(self) -> None:
        self.bar.advance(self.tiles)

    def image_done(self, name: str, dst: Path | str) -> None:
        self.bar.advance(self.images)
        self.log.advance(1, f"{name} -> {dst}")


@task_wrapper
def predict(cfg: DictConfig) -> list[Path]:
    if not cfg.get("input") or not cfg.get("output"):
        raise ValueError("pass input=<image file or folder> output=<folder>")
    in_path, out_dir = Path(cfg.input), Path(cfg.output)
    files = _inputs(in_path)
    compare = bool(cfg.get("compare", False))
    _check_output(files, in_path, out_dir, bool(cfg.get("overwrite", False)), compare, bool(cfg.get("metrics")))
    metric = _score_metrics(cfg)
    module = module_for_inference(cfg).eval()
    tile, overlap, budget = tiling_options(cfg, module.generator)
    device = torch.device(cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    module.to(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    if compare:
        (out_dir / COMPARE_DIR).mkdir(exist_ok=True)
    written, failed, rows, compare_rows = [], [], [], []
    start = time.perf_counter()
    with _Progress(len(files)) as progress:
        for p in files:
            try:
                x = load_image(p)[None].to(device)
            except ImageReadError as e:
                log.error("%s", e)
                failed.append(p)
                continue
            try:
                y = restore(module, x, tile, overlap, budget, module.tta, progress.tile_done, progress.new_image)
            except ValueError as e:  # this image's size (e.g. no tile fits memory_budget_mb): the others may do
                log.error("%s: not restored: %s", p, e)
                failed.append(p)
                continue
            if nan := int(y.isnan().sum()):
                # A PNG cannot hold NaN; written, these pixels would pass for black.
                log.error("%s: the restored image has %d NaN pixel(s) (the model is numerically unstable on this "
                          "input); not written", p, nan)
                failed.append(p)
                continue
            dst = out_dir / f"{p.stem}.png"
            save_image(y[0].cpu(), dst, text=MARK)
            written.append(dst)
            scores = {}
            if metric is not None:
                scores = _scores(metric, y, p, "restored")
                rows.append({"index": len(rows), "name": p.name, **scores})
            if compare:
                pair = side_by_side(x[0].cpu().clamp(0, 1), y[0].cpu())
                save_image(pair, out_dir / COMPARE_DIR / f"{p.stem}.png", text=MARK)
                if metric is not None:
                    hazy = _scores(metric, x.clamp(0, 1), p, "input")
                    compare_rows.append({"name": p.name, **{f"{n}_hazy": hazy[n] for n in metric.metric_names},
                                         **{f"{n}_restored": scores[n] for n in metric.metric_names}})
            progress.image_done(p.name, dst)
    seconds = time.perf_counter() - start
    means = {n: sum(r[n] for r in rows) / len(rows) for n in (metric.metric_names if metric and rows else ())}
    log.info("restored %d of %d image(s) in %.1f s (%.2f s/image) -> %s%s", len(written), len(files), seconds,
             seconds / max(1, len(written)), out_dir,
             "".join(f"; mean {n} {v:.4g}" for n, v in means.items()))
    if compare_rows:
        write_rows_csv(out_dir / COMPARE_DIR / "scores.csv", compare_rows)
    if metric is not None and rows:
        summary = predict_summary(cfg, module, in_path, files, rows, means, metric, seconds)
        write_run_results(Path(cfg.paths.output_dir), summary, cfg, rows=rows, rows_file=PER_IMAGE_CSV)
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
