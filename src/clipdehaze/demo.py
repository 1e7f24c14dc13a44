"""``make demo``: the comparison on the embedded synthetic haze set, offline, on CPU.

Trains every learned generator for the same number of optimisation steps with the real entry point
(``clipdehaze-train``): a step budget, not a time budget, so the table compares models, not how fast each runs on
this CPU (a time budget gave the slowest model less than half the others' steps); each row still reports its
training time, evaluates the parameter-free controls with ``clipdehaze-eval`` (``identity``: the hazy
input as is, the floor; ``dcp``: the dark channel prior), and writes ``outputs/demo/report.md`` with the
comparison table (PSNR / SSIM / params / MACs / time), a PSNR-vs-size scatter plot and ``grid.jpg``, one image
grid of every method (a row per method: hazy | output | GT for the first test images) composed from the runs' own
``grid.png`` files, so it costs no extra inference. MACs are counted on the generator each run built (its resolved
``model`` config, e.g. the 64-d tiny CLIP's width), so params and MACs in a row describe the same model.

Every learned generator trains with its own paper's loss wherever that can run offline (:data:`PAPER_LOSS`):
DehazeFormer's L1 on its [-1, 1] images, the SAR weather net's L1 + 0.1 CLIP-SRD, CLIPHaze's L1 (our reading);
MixDehazeNet's and MixCLDehazeNet's L1 + 0.1 CR needs torchvision's ImageNet ResNet-152 weights, so without them in
torchvision's cache those two train with the L1 term alone. The report names the loss of every row and why a row
departs from its paper's.

The CLIP-guided generators run with ``clip=tiny_random``: a tiny CLIP with RANDOM weights (nothing can be
downloaded here), so their CLIP prior carries no information in this demo. With real weights:
``python -m clipdehaze.demo --clip vit_b32_openai`` (cached OpenAI weights) or ``--clip local`` with
``CLIP_CHECKPOINT=/path`` (and ``CLIP_MODEL=<architecture>`` unless ViT-B-32).

Every method then restores a few real hazy photographs without ground truth (``--real-photos``, by default
Fattal's set in the project's ``../shared/data/real-hazy/fattal`` when it exists) with ``clipdehaze-eval
data=folder``, and the report puts their no-reference scores (NIQE, BRISQUE, mean dark channel) beside the
synthetic-set PSNR: what the numbers say about real haze, where no ground truth exists.

    python -m clipdehaze.demo [--steps 100] [--out outputs/demo] [--models dehazeformer_t cliphaze_t ...]
                              [--real-photos DIR] [--real-images 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Every learned generator gets this many optimisation steps: a step budget makes the rows comparable (same data
# seen, same number of updates) whatever each model costs per step.
DEFAULT_STEPS = 100
DEFAULT_MODELS = ["dehazeformer_t", "mixdehazenet_t", "mixcldehazenet_t", "cliphaze_t", "sar_weather_t"]
CONTROLS = ["identity", "dcp"]
# Small crops and batches so a 2-core CPU makes the steps in a minute or two per model.
COMMON = ["data=synthetic", "data.crop_size=96", "data.batch_size=4", "data.num_workers=1", "trainer=cpu",
          "logger=csv", "seed=0", "callbacks.rich_progress_bar=null", "trainer.max_epochs=1000",
          "trainer.check_val_every_n_epoch=1"]


#: Each generator family's own paper loss (a ``conf/loss`` option).
PAPER_LOSS = {"dehazeformer": "l1_upstream", "mixdehazenet": "l1_cr_upstream", "mixcldehazenet": "l1_cr_upstream",
              "cliphaze": "l1", "sar_weather": "sar_weather"}
#: What each loss option computes, as the report names it.
LOSS_LABELS = {"l1": "L1", "l1_upstream": "L1 on [-1, 1]", "l1_cr_upstream": "L1 on [-1, 1] + 0.1 CR (ResNet-152)",
               "sar_weather": "L1 + 0.1 CLIP-SRD"}


def cr_weights_cached() -> bool:
    """Whether torchvision's ImageNet ResNet-152 weights, which the CR loss needs, are in torchvision's cache."""
    import torch
    from torchvision.models import get_model_weights

    url = get_model_weights("resnet152")["IMAGENET1K_V1"].url
    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file()


#: Families whose paper states no loss: what the demo's choice rests on.
PAPER_SILENT = {"cliphaze": "its paper states no loss; L1 is our reading (experiments/cliphaze/README.md)"}


def demo_loss(name: str) -> tuple[str, str | None]:
    """(the loss option generator ``name`` trains with, why it is not its paper's loss or None)."""
    from clipdehaze.models.variants import variant

    family = variant(name).family
    if family not in PAPER_LOSS:
        return "l1", f"no paper loss recorded for the {family} family"
    loss = PAPER_LOSS[family]
    if family in PAPER_SILENT:
        return loss, PAPER_SILENT[family]
    if loss.startswith("l1_cr") and not cr_weights_cached():
        return "l1_upstream", ("its paper's 0.1 x CR term needs torchvision's ImageNet ResNet-152 weights, not in "
                               "torchvision's cache here (offline); the L1 term alone")
    return loss, None


def train_overrides(name: str, steps: int, clip: list[str]) -> list[str]:
    """``clipdehaze-train`` overrides of one learned generator's demo run: ``steps`` optimisation steps with its
    paper's loss where that can run (:func:`demo_loss`)."""
    return [f"model={name}", f"loss={demo_loss(name)[0]}", *clip, f"trainer.max_steps={steps}", *COMMON]


def _run(module: str, overrides: list[str], run_dir: Path) -> dict:
    # A rerun trains into the same folders: the earlier training runs are moved aside (replaced-<time>/), not lost.
    again = ["overwrite=true"] if module == "clipdehaze.train" else []
    cmd = [sys.executable, "-m", module, *overrides, *again, f"hydra.run.dir={run_dir}"]
    print("$ clipdehaze-" + {"clipdehaze.train": "train", "clipdehaze.evaluate": "eval"}[module], " ".join(overrides),
          flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    summary = json.loads((run_dir / "metrics.json").read_text())
    summary["wall_seconds"] = round(time.perf_counter() - start, 1)
    return summary


def _n_images(run_dir: Path) -> int:
    from clipdehaze.artefacts import PER_IMAGE_CSV

    if (run_dir / PER_IMAGE_CSV).is_file():
        return max(1, len((run_dir / PER_IMAGE_CSV).read_text().strip().splitlines()) - 1)
    return 1


def _row(s: dict, macs_g: float | None, run_dir: Path) -> str:
    m = s["metrics"]
    fit, test = s.get("fit_seconds"), s.get("test_seconds")
    per_img = f"{test / _n_images(run_dir):.2f}" if test else "-"
    steps = s.get("global_step")
    loss = "-"
    if s["generator"] not in CONTROLS:
        option, why = demo_loss(s["generator"])
        loss = LOSS_LABELS.get(option, option) + (" *" if why else "")
    return (f"| {s['generator']} | {loss} | {s['params'] / 1e6:.3f} | {'-' if macs_g is None else f'{macs_g:.2f}'} | "
            f"{m['test/psnr_synthetic_haze']:.2f} | {m['test/ssim_synthetic_haze']:.4f} | "
            f"{'-' if fit is None else f'{fit:.0f} s / {steps} steps'} | {per_img} |")


TABLE_HEAD = "| method | loss | params (M) | MACs @256² (G) | PSNR (dB) | SSIM | train | test s/img |"

#: Real hazy photos the demo scores without ground truth (relative to where the demo runs: the checkout).
DEFAULT_REAL_PHOTOS = "../shared/data/real-hazy/fattal"
NO_REFERENCE = ("niqe", "brisque", "dark_channel")


def real_photo_overrides(name: str, run_dir: Path, photos: Path, n_images: int) -> list[str]:
    """``clipdehaze-eval`` overrides that score one method on ``n_images`` real photos (no GT, no-reference
    metrics): a parameter-free control by name, a trained generator from its run's best checkpoint."""
    source = [f"model={name}"] if name in CONTROLS else [f"ckpt_path={best_checkpoint(run_dir)}"]
    return [*source, "data=folder", f"data.root={photos}", f"data.max_test_samples={n_images}", "trainer=cpu"]


def best_checkpoint(run_dir: Path) -> Path:
    summary = json.loads((run_dir / "metrics.json").read_text())
    return Path(summary.get("best_ckpt") or run_dir / "checkpoints" / "last.ckpt")


def _real_row(name: str, synthetic: dict, real: dict) -> str:
    m = real["metrics"]
    scores = " | ".join(f"{m[f'test/{k}_folder']:.3f}" if f"test/{k}_folder" in m else "-" for k in NO_REFERENCE)
    return f"| {name} | {synthetic['metrics']['test/psnr_synthetic_haze']:.2f} | {scores} |"


def run_macs(run_dir: Path) -> float:
    """GMACs at 256² of the generator a run built: its resolved ``model`` config (every factory argument, e.g.
    ``clip_dim`` from the run's CLIP), not the registry defaults, which assume a 512-d CLIP."""
    from omegaconf import OmegaConf

    from clipdehaze.bench import generator_macs

    from clipdehaze.lit_module import architecture_kwargs

    model = OmegaConf.to_container(OmegaConf.load(run_dir / "config_resolved.yaml").model, resolve=True)
    return generator_macs(model["name"], **architecture_kwargs(model)) / 1e9


def combined_grid(runs: dict[str, Path], path: Path, n_images: int = 3, height: int = 128) -> Path:
    """One image of every method: a row per method, each row hazy | output | GT for the first ``n_images`` test
    images, the method's name on the left. Cut from each run's ``grid.png`` (``save_grid``: one row per image,
    rows of ``GRID_ROW_HEIGHT``); every run tested the same images in the same order, so the columns line up."""
    from PIL import Image, ImageDraw

    from clipdehaze.artefacts import GRID_ROW_HEIGHT as row_h

    rows = {}
    for name, run_dir in runs.items():
        grid = Image.open(run_dir / "grid.png").convert("RGB")
        if grid.height % row_h:
            raise ValueError(f"{run_dir / 'grid.png'}: height {grid.height} is not a multiple of {row_h}")
        k = min(n_images, grid.height // row_h)
        rows[name] = [grid.crop((0, i * row_h, grid.width, (i + 1) * row_h)) for i in range(k)]
    k = min(len(r) for r in rows.values())
    gap, label_w = 8, 150
    scale = height / row_h
    tile_w = max(r[0].width for r in rows.values())
    row_w = round(tile_w * scale)
    canvas = Image.new("RGB", (label_w + k * (row_w + gap), 20 + len(rows) * (height + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((label_w, 4), f"each image: hazy | output | GT ({k} test images)", fill="black")
    for j, (name, tiles) in enumerate(rows.items()):
        y = 20 + j * (height + gap)
        draw.text((4, y + height // 2 - 6), name, fill="black")
        for i, tile in enumerate(tiles[:k]):
            tile = tile.resize((round(tile.width * scale), height), Image.LANCZOS)
            canvas.paste(tile, (label_w + i * (row_w + gap), y))
    canvas.save(path, quality=90)
    return path


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/demo")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                    help="optimisation steps per learned generator (the same for all)")
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="learned generators to train")
    ap.add_argument("--clip", default="tiny_random", help="CLIP config for the CLIP-guided generators")
    ap.add_argument("--real-photos", default=DEFAULT_REAL_PHOTOS,
                    help="folder of real hazy photos without ground truth scored with no-reference metrics "
                         "(skipped, saying so, when it does not exist)")
    ap.add_argument("--real-images", type=int, default=4, help="how many of them (evenly spaced)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.clip == "tiny_random":
        print("NOTE: clip=tiny_random -- the CLIP prior is a tiny RANDOM-weight model (offline demo); CLIP-guided "
              "numbers below are not CLIP-guided results. See the README for real CLIP weights.", flush=True)

    summaries = {}
    for name in CONTROLS:
        summaries[name] = _run("clipdehaze.evaluate", [f"model={name}", "data=synthetic", "trainer=cpu",
                                                       "num_grid_images=4"], out / name)
    clip = [f"clip={args.clip}"]
    if args.clip == "local":
        if not os.environ.get("CLIP_CHECKPOINT"):
            raise SystemExit("--clip local needs CLIP_CHECKPOINT=/path/to/open_clip/weights "
                             "(and CLIP_MODEL=<open_clip architecture> unless it is ViT-B-32)")
        clip += [f"clip.checkpoint={os.environ['CLIP_CHECKPOINT']}",
                 f"clip.model_name={os.environ.get('CLIP_MODEL', 'ViT-B-32')}"]
    for name in args.models:
        summaries[name] = _run("clipdehaze.train", train_overrides(name, args.steps, clip), out / name)

    from clipdehaze.render.plots import table_plot
    from clipdehaze.table import aggregate, build_rows, collect_runs

    macs = {n: run_macs(out / n) for n in summaries}
    protocol = summaries["dcp"]["metric_protocol"]
    plot_rows, _ = build_rows(aggregate(collect_runs([out / n for n in summaries])), [])
    for r in plot_rows:
        r["macs_g"] = macs.get(r["generator"])
    table_plot(plot_rows, [], out / "scatter.png")
    combined_grid({n: out / n for n in summaries}, out / "grid.jpg")

    photos = Path(args.real_photos).resolve()
    real = {}
    if photos.is_dir():
        for name in summaries:
            real[name] = _run("clipdehaze.evaluate", real_photo_overrides(name, out / name, photos, args.real_images),
                              out / "real" / name)
        real_protocol = next(iter(real.values()))["metric_protocol"]
        real_lines = [
            f"## Real hazy photos (no ground truth): {next(iter(real.values()))['images']} of `{photos}`",
            "",
            "No-reference scores of each method's output (mean over the photos; lower is better for all three), "
            "beside its synthetic-set PSNR. `identity` scores the hazy photos themselves.",
            "",
            "| method | synthetic PSNR (dB) | NIQE | BRISQUE | dark channel |",
            "|---|---|---|---|---|",
            *[_real_row(n, summaries[n], real[n]) for n in summaries],
            "",
            f"Protocol: {real_protocol}",
            "",
        ]
    else:
        real_lines = [f"Real-photo scores skipped: no folder {photos} (pass --real-photos DIR).", ""]

    grid_models = ["dcp", *args.models]
    lines = [
        "# clipdehaze demo: synthetic haze, CPU, offline",
        "",
        "Test split of the embedded synthetic haze set (scikit-image photos, atmospheric scattering model with "
        "homogeneous and non-homogeneous haze, source photos disjoint from training). Every learned generator "
        f"trained from scratch for the same {args.steps} optimisation steps (crop 96, batch 4, AdamW 2e-4, its "
        "paper's loss where it can run: the loss column), best "
        "checkpoint by val/psnr: a step budget rather than a time budget, so every model sees the same data and "
        "makes the same number of updates whatever a step costs it on this CPU (the train column gives the time "
        "each took). These are smoke-scale numbers, not paper results.",
        "",
        f"**CLIP prior: `clip={args.clip}`**"
        + (" -- a tiny CLIP with RANDOM weights: the CLIP-guided models get no real prior here."
           if args.clip == "tiny_random" else ""),
        "",
        f"Metric protocol: {protocol}",
        "",
        TABLE_HEAD,
        "|---|---|---|---|---|---|---|---|",
        *[_row(summaries[n], macs[n], out / n) for n in summaries],
        "",
        "loss: what each learned model trained with, its paper's own loss unless marked *: "
        + ("; ".join(f"{n}: {why}" for n in args.models if (why := demo_loss(n)[1])) or "none is marked") + ".",
        "",
        "MACs: torch's flop counter on the generator each run built (its CLIP inputs at that run's CLIP width), "
        "the published implementation's graph; the frozen CLIP's own cost is excluded.",
        "",
        *real_lines,
        f"Total demo wall time: {time.perf_counter() - start:.0f} s on {os.cpu_count()} CPU cores.",
        "",
        "![PSNR vs params and MACs](scatter.png)",
        "",
        "Every method, first test images (rows: methods; each image hazy | output | ground truth):",
        "",
        "![all methods](grid.jpg)",
        "",
        "Image grids (hazy | output | ground truth), first test images:",
        "",
        *[f"**{n}**\n\n![{n}]({n}/grid.png)\n" for n in grid_models],
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    table_start = lines.index(TABLE_HEAD)
    print("\n".join(lines[table_start:table_start + 2 + len(summaries) + 4]))
    print("\n".join(real_lines))
    print(f"\nreport: {report}")
    return report


if __name__ == "__main__":
    main()
