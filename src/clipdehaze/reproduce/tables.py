"""``clipdehaze-reproduce <paper> ...``: one command per paper table.

    clipdehaze-reproduce PAPER --list
    clipdehaze-reproduce PAPER --table TABLE [--rows EXP ...] [overrides ...]          train every row
    clipdehaze-reproduce PAPER --table TABLE --dry-run [--throughput FILE] [--assume-tmacs X] [overrides ...]
    clipdehaze-reproduce PAPER --table TABLE --weights PATH [PATH ...] [overrides ...] score published weights
    clipdehaze-reproduce PAPER --table TABLE --render [DIR ...]

A paper's tables and their rows (recipes: variant x dataset) come from its recipe table,
``experiments/<paper>/recipes.yaml`` (:mod:`clipdehaze.reproduce.recipes`).

* Training launches every runnable row as ONE Hydra multirun of ``clipdehaze-train -m experiment=<row>,...``
  into ``<log dir>/reproduce/<paper>-<table>/<stamp>/train`` (printed first), so ``hydra/launcher=joblib``,
  ``hydra/launcher=submitit_slurm`` and any other override pass through unchanged; the table is rendered when the
  multirun returns.
* ``--dry-run`` prints every job with its recipe numbers as the composed config holds them (overrides included)
  and its estimated cost (:mod:`clipdehaze.reproduce.cost`), launching nothing.
* ``--weights`` scores published weights instead of training: one ``clipdehaze-eval model=<generator>
  weights_path=<file> data=<test set>`` per row that a file matches (see :func:`match_weights`), into
  ``.../<stamp>/weights/<row>``, then renders the table.
* ``--render`` renders the table from run folders (default: the newest ``<stamp>`` folder of this table) beside
  ``experiments/<paper>/published.csv`` (:mod:`clipdehaze.reproduce.render`), into ``table.md``.

Weights files are matched to rows by name, first hit wins: ``<experiment>.{pth,pt,safetensors}``
(``dehazeformer_t_its.pth``, ours); the path upstream's training script saves the row's weights to, relative to
a given folder (``indoor/dehazeformer-t.pth`` in DehazeFormer's ``saved_models/``; the recipe table's
``saves`` pattern); that path's file name alone (``dehazeformer-t.pth``: a given folder holding one setting, or
files named one by one) when no other row of the table shares it.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from clipdehaze.reproduce.recipes import Paper, Recipe, Table, papers

WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")


# ----------------------------------------------------------------------------------------------------- overrides
def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(options and their values, Hydra overrides): every ``key=value`` and ``~key`` argument is an override,
    wherever it stands (after ``--weights a.pth`` too); ``-m`` is dropped (a table is a multirun)."""
    options, overrides = [], []
    for arg in argv:
        if arg in ("-m", "--multirun"):
            continue
        if not arg.startswith("-") and ("=" in arg or arg.startswith("~")):
            if arg.split("=", 1)[0].lstrip("+~") == "experiment":
                raise SystemExit("clipdehaze-reproduce: the rows come from the table; pick some with --rows EXP ... "
                                 "instead of experiment=")
            overrides.append(arg)
        else:
            options.append(arg)
    return options, overrides


def _is_hydra_override(arg: str) -> bool:
    key = arg.split("=", 1)[0].lstrip("+~")
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def sweep_combinations(overrides: list[str]) -> list[list[str]]:
    """The job overrides a Hydra multirun makes of ``overrides`` (comma lists and ``range()`` sweeps expanded in
    Hydra's order), without the ``hydra`` ones (they choose how jobs run, not what they compute)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    axes: list[list[str]] = []
    for arg in overrides:
        if _is_hydra_override(arg):
            continue
        override = parser.parse_override(arg)
        if override.is_sweep_override():
            if override.is_discrete_sweep():
                key = override.get_key_element()
                axes.append([f"{key}={v}" for v in override.sweep_string_iterator()])
            else:
                raise SystemExit(f"clipdehaze-reproduce: {arg} is a search space (an Optuna sweeper's), not a list "
                                 "of jobs; give the values as a comma list")
        else:
            axes.append([arg])
    return [list(c) for c in itertools.product(*axes)] if axes else [[]]


def _compose(experiment: str, overrides: list[str]):
    from clipdehaze.utils.hydra_utils import compose_config

    return compose_config("train", [f"experiment={experiment}", *overrides])


def _log_dir(row: str, overrides: list[str]) -> Path:
    return Path(_compose(row, sweep_combinations(overrides)[0]).paths.log_dir)


def table_dir(paper: str, table: str, log_dir: Path) -> Path:
    return log_dir / "reproduce" / f"{paper}-{table}"


# ----------------------------------------------------------------------------------------------------- --list
def list_paper(paper: Paper) -> str:
    from clipdehaze.table import EXPERIMENTS, read_published

    published = read_published(paper.name) if (EXPERIMENTS / paper.name / "published.csv").is_file() else []
    pub = {(p.get("generator"), p.get("dataset")): p for p in published}
    lines = [f"{paper.name}: {paper.title}", f"recipe table: {paper.source}", ""]
    for table in paper.tables.values():
        lines.append(f"--table {table.name}: {table.title} ({len(table.rows)} rows)")
        for name in table.rows:
            r = paper.recipes[name]
            p = pub.get((r.generator, r.setting.test))
            published_cell = (f"published {p['psnr']:.2f} dB" if p and p.get("psnr") is not None
                              else "published: pending")
            lines.append(f"  {name:<32} {r.file:<40} {published_cell:<22} "
                         f"{'runnable' if r.runnable else 'NOT runnable: empty upstream file'}")
        lines.append("")
    others = [r for r in paper.recipes.values() if not any(r.name in t.rows for t in paper.tables.values())]
    if others:
        lines.append("recipes in no table (experiment=<name>; default.json ones need model=<variant>):")
        lines += [f"  {r.name:<32} {r.file}" for r in others]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- --dry-run
def _train_images(cfg, recipe: Recipe) -> tuple[int, str]:
    """The training pairs of the user's folder when it exists, else the count the recipe table states."""
    from clipdehaze.data.io import IMAGE_EXTENSIONS

    folder = Path(cfg.data.root) / (cfg.data.train_split or "") / cfg.data.input_dir
    if folder.is_dir():
        n = sum(1 for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        return n, f"counted in {folder}"
    return recipe.setting.train_images, "the set's published size"


def dry_run(paper: Paper, table: Table, rows: list[str], overrides: list[str], throughput) -> str:
    from omegaconf import OmegaConf

    from clipdehaze.lit_module import architecture_kwargs

    combos = sweep_combinations(overrides)
    jobs, used, total = [], set(), 0.0
    for row in rows:
        recipe = paper.recipes[row]
        for combo in combos:
            cfg = _compose(row, combo)
            d, sched = cfg.data, cfg.scheduler.scheduler
            n, counted = _train_images(cfg, recipe)
            steps_per_epoch = n // d.batch_size
            limit = cfg.trainer.limit_train_batches
            if isinstance(limit, int) and not isinstance(limit, bool):
                steps_per_epoch = min(steps_per_epoch, limit)
            elif isinstance(limit, float):
                steps_per_epoch = int(steps_per_epoch * limit)
            steps = cfg.trainer.max_epochs * steps_per_epoch
            if cfg.trainer.max_steps not in (None, -1):
                steps = min(steps, cfg.trainer.max_steps)
            model_kwargs = architecture_kwargs(OmegaConf.to_container(cfg.model, resolve=True))
            backbone = cfg.loss.get("arch") if str(cfg.loss.get("_target_", "")).endswith(".L1WithCR") else None
            seconds, basis = throughput.seconds_per_image(cfg.model.name, d.crop_size, model_kwargs, backbone)
            used.add(basis)
            hours = steps * d.batch_size * seconds / 3600
            total += hours
            val = "centre crop" if d.val_crop_size is None else ("full image" if d.val_crop_size == 0
                                                                  else f"crop {d.val_crop_size}")
            jobs.append([str(len(jobs)), f"`{row}`", recipe.file, cfg.model.name, " ".join(combo) or "-",
                         str(d.batch_size), str(d.crop_size), f"{cfg.optimizer.lr:g}", str(cfg.trainer.max_epochs),
                         f"{sched.T_max} / {sched.eta_min:.3g}", val, str(cfg.callbacks.eval_freq.eval_freq)
                         if cfg.callbacks.get("eval_freq") else str(cfg.trainer.check_val_every_n_epoch),
                         "+".join(d.augment) or "-", f"{d.get('edge_decay', 0):g}", str(cfg.trainer.precision),
                         cfg.hydra.runtime.choices.loss, f"{n} ({counted})", f"{steps:,}", f"{hours:.1f} ({basis})"])
    head = ["job", "experiment", "upstream file", "model", "overrides", "batch", "patch", "lr", "epochs run",
            "T_max / eta_min", "validation", "val every", "augment", "edge decay", "precision", "loss",
            "training images", "steps", "GPU-h"]
    first = paper.recipes[rows[0]]
    up = first.upstream
    lines = [f"{paper.name} --table {table.name}: {table.title} -- {len(jobs)} jobs (dry run: nothing launched)",
             f"recipes: {up.repo}@{up.commit} ({up.entry}); each job: AdamW/Adam with torch's defaults, "
             "CosineAnnealingLR(T_max = epochs, eta_min = lr * 1e-2) stepped once per epoch, upstream's epochs + 1 "
             "epochs, validation after the 0-based epochs divisible by eval_freq, fp16 autocast + GradScaler on one "
             "GPU (the batch is upstream's global DataParallel batch)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             *["| " + " | ".join(j) + " |" for j in jobs], "",
             f"estimated total: {total:.1f} GPU-hours (one GPU per job; joblib/SLURM run jobs side by side)",
             "cost basis:", *[f"- {line}" for line in throughput.describe(used)]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- --weights
def _candidates(paths: list[Path]) -> list[tuple[Path, Path]]:
    """(file, its path relative to the folder given, or its bare name when given as a file)."""
    out = []
    for p in paths:
        if p.is_dir():
            out += [(f, f.relative_to(p)) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix in WEIGHT_SUFFIXES]
        elif p.is_file():
            out.append((p, Path(p.name)))
        else:
            raise SystemExit(f"clipdehaze-reproduce: --weights {p}: no such file or folder")
    return out


def match_weights(paper: Paper, rows: list[str], paths: list[Path]) -> dict[str, Path]:
    """Row -> weights file, by the naming rules of the module docstring; an ambiguous row is an error naming the
    files."""
    files = _candidates(paths)
    names = {row: Path(paper.recipes[row].saved_as).name for row in rows}
    found: dict[str, Path] = {}
    for row in rows:
        saved = Path(paper.recipes[row].saved_as)
        rules = (lambda rel: rel.suffix in WEIGHT_SUFFIXES and rel.stem == row and rel.parent == Path("."),
                 lambda rel: rel == saved,
                 lambda rel: rel.name == saved.name and list(names.values()).count(saved.name) == 1)
        for rule in rules:
            hits = [f for f, rel in files if rule(rel)]
            if len(hits) > 1:
                raise SystemExit(f"clipdehaze-reproduce: row {row} matches several weights files "
                                 f"({', '.join(map(str, hits))}); pass one of them")
            if hits:
                found[row] = hits[0]
                break
    return found


def score_weights(paper: Paper, table: Table, rows: list[str], paths: list[Path], overrides: list[str],
                  out: Path) -> int:
    from clipdehaze.utils.hydra_utils import hydra_quote, shell_quote

    found = match_weights(paper, rows, paths)
    if not found:
        expected = ", ".join(f"{r}.pth or {paper.recipes[r].saved_as}" for r in rows)
        raise SystemExit(f"clipdehaze-reproduce: no weights file under {', '.join(map(str, paths))} matches a row of "
                         f"{paper.name} --table {table.name}; expected names: {expected}")
    given = {a.split("=", 1)[0].lstrip("+~") for a in overrides}
    if fixed := sorted(given & {"model", "weights_path", "hydra.run.dir"}):
        raise SystemExit(f"clipdehaze-reproduce: {', '.join(fixed)} come from the table's rows and --weights; drop "
                         f"{' '.join(k + '=' for k in fixed)}")
    print(f"scoring {len(found)} of {len(rows)} rows of {paper.name} --table {table.name} into {out / 'weights'}")
    failed = []
    for row, weights in found.items():
        recipe = paper.recipes[row]
        # data= and clip= default to the row's test set and CLIP; the user's (e.g. data=paired data.root=...) win
        defaults = {"data": recipe.setting.test, "clip": recipe.upstream.clip}
        args = [f"model={recipe.generator}", f"weights_path={hydra_quote(str(weights.resolve()))}",
                *[f"{k}={v}" for k, v in defaults.items() if v and k not in given], *overrides,
                f"hydra.run.dir={hydra_quote(str(out / 'weights' / row))}"]
        print(f"$ clipdehaze-eval {' '.join(shell_quote(a) for a in args)}", flush=True)
        if subprocess.run([sys.executable, "-m", "clipdehaze.evaluate", *args]).returncode != 0:
            failed.append(row)
    for row in rows:
        if row not in found:
            print(f"no weights for {row} (looked for {row}.pth, {paper.recipes[row].saved_as})")
    if failed:
        print(f"clipdehaze-reproduce: scoring failed for {', '.join(failed)} (see above)")
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------------- training
def launch(paper: Paper, table: Table, rows: list[str], overrides: list[str], out: Path) -> tuple[int, Path]:
    from clipdehaze.utils.hydra_utils import hydra_quote, shell_quote

    sweep = next((a.split("=", 1)[1] for a in overrides if a.split("=", 1)[0] == "hydra.sweep.dir"), None)
    train_dir = Path(sweep) if sweep else out / "train"
    args = ["-m", f"experiment={','.join(rows)}", *overrides]
    if not sweep:
        args.append(f"hydra.sweep.dir={hydra_quote(str(train_dir))}")
    print(f"training {len(rows)} rows of {paper.name} --table {table.name} as one multirun into {train_dir}")
    print(f"$ clipdehaze-train {' '.join(shell_quote(a) for a in args)}", flush=True)
    return subprocess.run([sys.executable, "-m", "clipdehaze.train", *args]).returncode, train_dir


# ----------------------------------------------------------------------------------------------------- main
def _parser(paper: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"clipdehaze-reproduce {paper}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="the paper's tables, their rows and runnability")
    ap.add_argument("--table", help="the table to run, score or render (see --list)")
    ap.add_argument("--rows", nargs="+", metavar="EXP", help="only these rows (experiment names) of the table")
    ap.add_argument("--dry-run", action="store_true", help="print every job, its recipe numbers and cost; run nothing")
    ap.add_argument("--throughput", type=Path, metavar="FILE",
                    help="measured training rates for the cost: gpu-check.json (make gpu-check) or bench.json "
                         "(clipdehaze-bench models)")
    ap.add_argument("--assume-tmacs", type=float, default=None, metavar="X",
                    help="effective training TMAC/s assumed where nothing is measured")
    ap.add_argument("--weights", nargs="+", type=Path, metavar="PATH",
                    help="score published weights (files or folders, matched to rows by name) instead of training")
    ap.add_argument("--render", nargs="*", type=Path, metavar="DIR",
                    help="render the table from these run folders (none: the newest run of this table)")
    ap.add_argument("--experiments", type=Path, default=None, metavar="DIR",
                    help="folder holding <paper>/published.csv (default: the project's experiments/)")
    ap.add_argument("--out", type=Path, default=None, metavar="DIR",
                    help="output folder (default: <log dir>/reproduce/<paper>-<table>/<stamp>)")
    return ap


def main(paper_name: str, argv: list[str]) -> int:
    from clipdehaze.reproduce.cost import ASSUMED_TMACS, Throughput, read_throughput
    from clipdehaze.reproduce.render import render
    from clipdehaze.utils.hydra_utils import run_stamp

    known = papers()
    if paper_name not in known:
        print(f"clipdehaze-reproduce: no recipe table for paper {paper_name!r}; papers: {', '.join(known)} "
              "(or `trajectory FILE`)", file=sys.stderr)
        return 2
    paper = known[paper_name]
    options, overrides = split_argv(argv)
    args = _parser(paper_name).parse_args(options)
    if args.list:
        print(list_paper(paper))
        return 0
    if not args.table:
        print(f"clipdehaze-reproduce {paper_name}: choose a table with --table ({', '.join(paper.tables)}), or --list",
              file=sys.stderr)
        return 2
    try:
        table = paper.table(args.table)
    except KeyError as e:
        print(f"clipdehaze-reproduce: {e.args[0]}", file=sys.stderr)
        return 2
    rows = list(table.rows)
    if args.rows:
        if unknown := [r for r in args.rows if r not in rows]:
            print(f"clipdehaze-reproduce: --rows {' '.join(unknown)}: not rows of {paper_name} --table {table.name} "
                  f"({', '.join(rows)})", file=sys.stderr)
            return 2
        rows = [r for r in rows if r in args.rows]
    runnable = [r for r in rows if paper.recipes[r].runnable]
    for r in rows:
        if r not in runnable:
            print(f"skipping {r}: {paper.recipes[r].describe()} is empty upstream (no numbers; upstream's train.py "
                  "stops in json.load)")
    if not runnable and args.render is None:
        print("clipdehaze-reproduce: no runnable row selected", file=sys.stderr)
        return 2
    log_dir = _log_dir(runnable[0] if runnable else next(r for r in paper.recipes if paper.recipes[r].runnable),
                       overrides)
    base = table_dir(paper.name, table.name, log_dir)

    if args.render is not None:
        dirs = args.render
        if not dirs:
            stamps = sorted((d for d in base.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime) \
                if base.is_dir() else []
            if not stamps:
                print(f"clipdehaze-reproduce: nothing to render: no run of {paper.name} --table {table.name} under "
                      f"{base}; pass the run folders: --render DIR ...", file=sys.stderr)
                return 2
            dirs = [stamps[-1]]
        out = args.out or (dirs[0] if len(dirs) == 1 else base / run_stamp())
        text, _ = render(paper, table, dirs, out, args.experiments)
        print(text)
        print(f"wrote {out / 'table.md'}")
        return 0

    if args.dry_run:
        throughput = (read_throughput(args.throughput, args.assume_tmacs or ASSUMED_TMACS) if args.throughput
                      else Throughput(assumed_tmacs=args.assume_tmacs or ASSUMED_TMACS))
        print(dry_run(paper, table, runnable, overrides, throughput))
        print(f"\nwould run: clipdehaze-train -m experiment={','.join(runnable)}"
              + "".join(" " + shlex.quote(a) for a in overrides) + f" (into {base}/<stamp>/train)")
        return 0

    out = args.out or base / run_stamp()
    if args.weights:
        rc = score_weights(paper, table, runnable, args.weights, overrides, out)
        run_dirs = [out / "weights"]
    else:
        rc, train_dir = launch(paper, table, runnable, overrides, out)
        run_dirs = [train_dir]
    text, _ = render(paper, table, run_dirs, out, args.experiments)
    print(text)
    print(f"wrote {out / 'table.md'}")
    return rc
