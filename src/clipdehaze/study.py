"""``make study``: the prior study of every CLIP-guided generator, shortened, offline, on the embedded data.

For each family this runs the study experiment as the README documents it (``clipdehaze-train -m
experiment=study_<family>``: real, shuffled and constant prior plus the CLIP-free control, over the experiment's
seeds), shortened to a few CPU training steps of the tiny ``*_test`` variants on the embedded synthetic haze set,
then ``clipdehaze-compare`` on the multirun. Its CLIP is ``clip=tiny_random``, a tiny CLIP with RANDOM weights
(nothing can be downloaded here): **a random prior cannot carry information about the images**, so ``real`` ≈
``shuffled`` ≈ ``constant`` is the expected result. The run shows the machinery (controls, statistics, report);
whether CLIP helps is answered by the same commands with real CLIP weights on a paper dataset.

    python -m clipdehaze.study [--families mixcldehazenet cliphaze sar_weather] [--seeds 0,1,2] [--steps 12]
                               [--out outputs/study]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

#: family -> its tiny variant (the experiment's own model is the T size).
FAMILIES = {"mixcldehazenet": "mixcldehazenet_test", "cliphaze": "cliphaze_test", "sar_weather": "sar_weather_test"}
RANDOM_PRIOR = ("The CLIP prior of this study is clip=tiny_random, a tiny CLIP with RANDOM weights: it cannot carry "
                "information about the images, so real ~ shuffled ~ constant is the expected result. This run shows "
                "the machinery, not whether CLIP helps; for that, run `clipdehaze-train -m experiment=study_<family>` "
                "with real CLIP weights (see README, 'Does the CLIP prior help?').")


def shortening(steps: int) -> list[str]:
    """Overrides that make a study job a CPU smoke run on the embedded data."""
    return ["data=synthetic", "clip=tiny_random", "trainer=cpu", "trainer.max_epochs=1",
            f"trainer.limit_train_batches={steps}", "trainer.limit_val_batches=2", "trainer.check_val_every_n_epoch=1",
            "trainer.num_sanity_val_steps=0", "data.crop_size=64", "data.batch_size=4", "data.num_workers=0",
            "callbacks.rich_progress_bar=null", "callbacks.model_summary=null"]


def run_family(family: str, out: Path, steps: int, seeds: str | None) -> tuple[Path, float]:
    """Train the family's multirun into ``out/<family>/runs`` and compare it into ``out/<family>/compare``;
    -> (the compare folder, seconds)."""
    start = time.perf_counter()
    sweep, report = out / family / "runs", out / family / "compare"
    overrides = [f"experiment=study_{family}", f"model={FAMILIES[family]}", *shortening(steps),
                 *([f"seed={seeds}"] if seeds else [])]
    print(f"$ clipdehaze-train -m {' '.join(overrides)}", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "clipdehaze.train", "-m", *overrides, f"hydra.sweep.dir={sweep}"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    print(f"$ clipdehaze-compare {sweep} --out {report}", flush=True)
    subprocess.run([sys.executable, "-m", "clipdehaze.compare", str(sweep), "--out", str(report)], check=True, env=env)
    return report, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clipdehaze.study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=list(FAMILIES))
    ap.add_argument("--seeds", default=None, help="e.g. 0,1 (default: the experiments' seeds, 0,1,2)")
    ap.add_argument("--steps", type=int, default=12, help="training steps per job")
    ap.add_argument("--out", type=Path, default=Path("outputs/study"))
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    out = args.out / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    print(RANDOM_PRIOR + "\n", flush=True)
    start = time.perf_counter()
    reports = [(f, *run_family(f, out, args.steps, args.seeds)) for f in args.families]
    print("\n" + RANDOM_PRIOR)
    for family, report, seconds in reports:
        print(f"{family}: {report}/compare.md, compare.html ({seconds:.0f} s)")
    print(f"study finished in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
