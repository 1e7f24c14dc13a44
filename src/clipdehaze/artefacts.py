"""What a job writes into its run folder: ``metrics.json`` (numbers, protocol and provenance: :func:`run_summary`,
:func:`predict_summary`), the per-image CSV, ``config_resolved.yaml`` and ``grid.png``, each atomically. What a job
runs is built by :mod:`clipdehaze.build`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch
from omegaconf import DictConfig, OmegaConf

from clipdehaze.utils.files import atomic_write, to_json, write_in_order

if TYPE_CHECKING:
    import lightning as L

    from clipdehaze.lit_module import DehazeLitModule


#: Per-image metrics of the test split, written by clipdehaze-train and clipdehaze-eval alike.
PER_IMAGE_CSV = "per_image.csv"


def floats(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, (int, float)):
            out[k] = float(v)
    return out


def write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON (NaN/Inf as null, see :func:`clipdehaze.utils.files.to_json`), written atomically."""
    atomic_write(path, to_json(obj))


def write_rows_csv(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Per-image rows as CSV, text cells a spreadsheet would evaluate neutralised (:mod:`clipdehaze.render.csv`;
    :func:`clipdehaze.render.csv.read_dicts` reads them back exactly)."""
    from clipdehaze.render.csv import dicts_to_csv

    rows = list(rows)
    atomic_write(path, dicts_to_csv(list(rows[0]) if rows else ["index", "name"], rows))


def write_run_results(output_dir: str | Path, summary: dict[str, Any], cfg: DictConfig,
                      rows: list[dict[str, Any]] | None = None, rows_file: str = PER_IMAGE_CSV,
                      samples: list[dict[str, torch.Tensor]] | None = None) -> None:
    """A run's result files, most valuable first: ``metrics.json``, the per-image CSV, ``config_resolved.yaml``,
    ``grid.png``. Each is atomic; a failed one (a full disk) does not stop the others, and the error names it."""
    out = Path(output_dir)
    files: list[tuple[Path, Any]] = [(out / "metrics.json", lambda p: write_json(p, summary))]
    if rows is not None:
        files.append((out / rows_file, lambda p: write_rows_csv(p, rows)))
    files.append((out / "config_resolved.yaml", lambda p: atomic_write(p, OmegaConf.to_yaml(cfg, resolve=True))))
    if samples:
        files.append((out / "grid.png", lambda p: save_grid(samples, p)))
    write_in_order(files)


#: Height of one image row in the ``grid.png`` that train/eval write (the demo cuts its combined grid from them).
GRID_ROW_HEIGHT = 192


def save_grid(samples: list[dict[str, torch.Tensor]], path: str | Path, height: int = GRID_ROW_HEIGHT) -> None:
    """One row per image: input | output | target (each resized to ``height``), written atomically."""
    from clipdehaze.data.io import encode_png

    rows = []
    for s in samples:
        tiles = [s[k] for k in ("input", "output", "target") if k in s]
        resized = []
        for t in tiles:
            h, w = t.shape[-2:]
            nw = max(1, round(w * height / h))
            resized.append(torch.nn.functional.interpolate(t[None].float(), size=(height, nw), mode="bilinear",
                                                           align_corners=False, antialias=True)[0])
        gap = torch.ones(3, height, 4)
        row = []
        for r in resized:
            row += [r, gap]
        rows.append(torch.cat(row[:-1], dim=2))
    if not rows:
        return
    width = max(r.shape[-1] for r in rows)
    rows = [torch.nn.functional.pad(r, (0, width - r.shape[-1]), value=1.0) for r in rows]
    atomic_write(path, encode_png(torch.cat(rows, dim=1).clamp(0, 1)))


def run_summary(cfg: DictConfig, module: DehazeLitModule, metrics: dict[str, float], *, datamodule: Any = None,
                trainer: L.Trainer | None = None, weights: dict[str, Any] | None = None,
                train_config: dict[str, Any] | None = None, **extra) -> dict[str, Any]:
    """What metrics.json holds: numbers, the protocol they were computed under, and what produced them
    (:mod:`clipdehaze.provenance`: scored images and their manifest, weights, code, environment, config)."""
    from clipdehaze import provenance

    config = OmegaConf.to_container(cfg, resolve=True)
    rows = getattr(module, "test_rows", None)
    dataset = provenance.dataset_provenance(datamodule, [r["index"] for r in rows] if rows is not None else None)
    prior = getattr(module, "clip_prior", None)
    # An evaluated checkpoint's numbers belong to the run that trained it: its seed is the one a table averages.
    seed = (train_config or {}).get("seed", cfg.get("seed"))
    return {
        "generator": module.generator_name,
        "data": cfg.data.get("name") if cfg.get("data") else None,
        "seed": seed,
        "metric_protocol": module.protocol_description(),
        "params": sum(p.numel() for p in module.generator.parameters()),
        "metrics": metrics,
        "images": dataset.get("images"),
        "dataset": dataset,
        "weights": weights or {"origin": "unknown"},
        "clip": getattr(prior, "model_id", None),
        "clip_control": clip_control_record(cfg, module, train_config),
        "code": provenance.code_provenance(),
        "environment": provenance.environment_provenance(provenance.trainer_device(trainer)),
        "config_sha256": provenance.config_sha256(config, train_config),
        "config": config,
        **({"train_config": train_config} if train_config is not None else {}),
        **extra,
    }


def predict_summary(cfg: DictConfig, module: DehazeLitModule, in_path: Path, files: list[Path], rows: list[dict],
                    means: dict, metric, seconds: float) -> dict[str, Any]:
    """What ``clipdehaze-predict metrics=...`` writes to metrics.json, the summary ``clipdehaze-table`` reads:
    ``test/<metric>_<input folder name>``, protocol, weights, code and the scored files' manifest."""
    from clipdehaze import provenance
    from clipdehaze.utils.tta import TTA_DESCRIPTIONS

    root = in_path if in_path.is_dir() else in_path.parent
    data = root.resolve().name or "input"
    scored = [f for f in files if any(r["name"] == f.name for r in rows)]
    config = OmegaConf.to_container(cfg, resolve=True)
    prior = getattr(module, "clip_prior", None)
    return {
        "generator": module.generator_name if hasattr(module, "hparams") else None,
        "data": data,
        "seed": (module.run_config or {}).get("seed"),
        "metric_protocol": "; ".join(p for p in (metric.describe(), TTA_DESCRIPTIONS[module.tta]) if p),
        "params": sum(p.numel() for p in module.generator.parameters()),
        "metrics": {f"test/{n}_{data}": v for n, v in means.items()},
        "images": len(rows),
        "dataset": {"name": data, "images": len(rows), "available": len(files), "subset": len(rows) < len(files),
                    "manifest_sha256": provenance.manifest_sha256(scored, root)},
        "weights": inference_weights(cfg, module),
        "clip": getattr(prior, "model_id", None),
        "code": provenance.code_provenance(),
        "environment": provenance.environment_provenance(str(next(module.parameters(), torch.empty(0)).device)),
        "config_sha256": provenance.config_sha256(config, module.run_config),
        "config": config,
        # The checkpoint's training config: clipdehaze-table counts the run with its training recipe and seed.
        **({"train_config": module.run_config} if module.run_config is not None else {}),
        "predict_seconds": round(seconds, 2),
    }


def clip_control_record(cfg: DictConfig, module: DehazeLitModule,
                        train_config: dict[str, Any] | None = None) -> dict[str, str] | None:
    """``metrics.json``'s ``clip_control``: the prior controls of training and test, None for a generator without
    CLIP inputs."""
    from clipdehaze.models.clip.control import PriorControl
    from clipdehaze.models import clip_inputs_of

    if not clip_inputs_of(module.generator):
        return None
    return PriorControl.from_config(cfg, train_config, cfg.get("ckpt_path")).record()


def weights_file_provenance(path: str) -> dict[str, Any]:
    """A ``weights_path=`` file: origin ``published`` with the release it is (file, source) when its sha256 is one
    a paper's recipe table lists under ``releases`` (:func:`clipdehaze.reproduce.recipes.published_release`),
    otherwise ``external``; the sha256 either way."""
    from clipdehaze.provenance import weights_provenance
    from clipdehaze.reproduce.recipes import published_release

    record = weights_provenance("external", path)
    if (release := published_release(record.get("sha256"))) is not None:
        record.update(origin="published", release=release)
    return record


def inference_weights(cfg: DictConfig, module: DehazeLitModule) -> dict[str, Any]:
    """The ``weights`` provenance of an eval/predict module (see :mod:`clipdehaze.provenance`)."""
    from clipdehaze.provenance import weights_provenance

    if cfg.get("ckpt_path"):
        return {**weights_provenance("checkpoint", cfg.ckpt_path), "ema": module.ema_weights}
    if cfg.get("weights_path"):
        return weights_file_provenance(cfg.weights_path)
    if any(True for _ in module.generator.parameters()):
        return weights_provenance("random")
    return weights_provenance("none")
