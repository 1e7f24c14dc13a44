"""Run the commands the docs show, the way they show them (used by tests/test_docs_commands.py).

Every fenced ``bash`` block of README.md and experiments/**/README.md runs as a bash script, unchanged except
for three documented conventions, in a fresh working directory outside the checkout:

* ``clipdehaze-*`` are shell functions that call the real entry point through :func:`main` (``run`` mode), which
  appends a fixed set of shortening overrides (:data:`SHORTENING`: one short epoch, small crops, the tiny random
  CLIP, few test images). An override of a key the command already sets replaces that value (Hydra's last
  value wins). Nothing else is added: never ``hydra.run.dir``, ``hydra.sweep.dir`` or ``paths.*``.
* ``<run>`` is the newest training run folder and ``<stamp>`` the newest multirun folder's name, resolved when the
  command runs (what a user copies from the previous command's output).
* A command whose comment says ``(needs: X)`` cannot run offline; it must fail, naming what it needs
  (:data:`NEEDS`).
* ``make`` lines are skipped: a make target runs in the checkout, and each has its own test.

The working directory holds what a user would have there: tiny paired datasets in every paper dataset's layout
under ``./data`` (the default ``paths.data_dir``), the published weights a command names with ``weights_path=``
(random values in the upstream format; for ``clipdehaze-reproduce --weights DIR``, a folder in upstream's
saved_models/ layout), the input photos a predict command names, the folder a paper test set's ``data.root=`` names,
the official download a ``clipdehaze-data prepare`` command names (:data:`FAKE_DOWNLOADS`), and the recorded
trajectory a ``clipdehaze-reproduce trajectory`` command names (copied from
``$CLIPDEHAZE_SHARED/reference/trajectories``; without the project's shared/ folder that command is skipped, with the
reason, and the doc's test reports the skip).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "experiments").rglob("README.md"))]

#: The shortening overrides per tool (Hydra tools: key=value; argparse tools: option values).
SHORTENING = {
    "train": ["trainer.max_epochs=1", "trainer.max_steps=-1", "trainer.limit_train_batches=2",
              "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0",
              "trainer.check_val_every_n_epoch=1", "data.crop_size=48", "data.batch_size=2", "data.num_workers=0",
              "clip=tiny_random"],
    "eval": ["trainer.limit_test_batches=2", "clip=tiny_random"],
    "predict": ["clip=tiny_random"],
    "data clip-cache": ["clip=tiny_random"],
    # 8 training steps of the recorded run: nothing to shorten.
    "reproduce trajectory": [],
}
#: Tools whose first argument picks a job with its own shortening (``SHORTENING["<tool> <job>"]``).
SUBCOMMAND_TOOLS = ("data", "reproduce")
#: argparse tools: option -> its values (a flag has none); a given option's values are replaced. The scan bench's
#: profile of cliphaze_t (minutes) is covered by its own test.
SHORTENING_OPTIONS = {"bench": {"--sizes": ["64"], "--mac-size": ["64"], "--repeats": ["1"], "--no-memory": [],
                                "--no-profile": []}}
#: More shortening when a command selects an Optuna search (its trial count).
SHORTENING_OPTUNA = ["hydra.sweeper.n_trials=2"]

#: ``(needs: X)`` -> text the command's output must contain when it stops offline.
NEEDS = {
    "resnet152": "resnet152 ImageNet weights",                 # the CR loss's frozen backbone (download once)
    "slurm": "are you indeed on a slurm cluster",              # submitit_slurm off a cluster
    "earlier-run": "no clipdehaze metrics.json",               # reads the results of a command above that needs one
    "gpu": "needs a CUDA GPU",                                 # trainer=gpu without a GPU
}

TOOLS = {"train": "clipdehaze.train", "eval": "clipdehaze.evaluate", "predict": "clipdehaze.predict",
         "data": "clipdehaze.data.cli", "table": "clipdehaze.table", "bench": "clipdehaze.bench",
         "compare": "clipdehaze.compare", "reproduce": "clipdehaze.reproduce.cli"}
#: ``clipdehaze-reproduce PAPER ...`` passes its overrides to the tool it runs: training a table gets the train
#: shortening, scoring weights the eval one; --list, --dry-run and --render run nothing to shorten.
REPRODUCE_QUIET = ("--list", "--dry-run", "--render")
#: ``clipdehaze-reproduce ... --weights DIR`` with no DIR yet: what a user downloaded, in upstream's saved_models/
#: layout (<setting>/<model>.pth), random values; the table's first rows only (a partial download), so the command
#: also lists rows without weights.
REPRODUCE_WEIGHT_ROWS = 2
_PLACEHOLDER = re.compile(r"<([A-Za-z][\w-]*)>")
_NEEDS_MARK = re.compile(r"\(needs: ([\w-]+)\)")


# ----------------------------------------------------------------------------------------------------- docs
def code_blocks(text: str) -> list[str]:
    """The fenced ```bash blocks of a Markdown file, in order."""
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def inline_commands(text: str) -> list[str]:
    """Inline code spans that are a clipdehaze command with arguments (prose outside fenced blocks)."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    spans = re.findall(r"`([^`\n]+)`", prose)
    return [s for s in spans if re.match(r"clipdehaze-[a-z]+ \S", s)]


def logical_lines(block: str) -> list[str]:
    """Lines with backslash continuations joined."""
    out, cur = [], ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    if cur:
        out.append(cur)
    return out


def commands_in(block: str) -> list[str]:
    """The clipdehaze commands of a block (for the report), comments stripped."""
    found = []
    for line in logical_lines(block):
        code = line.split(" #", 1)[0].strip()
        m = re.search(r"(clipdehaze-[a-z]+\b.*)", code)
        if m and not code.startswith("#"):
            found.append(m.group(1).strip())
    return found


def to_script(block: str) -> str:
    """A doc block as the bash the harness runs: placeholders resolved at run time, needs-markers as env."""
    lines = []
    for line in logical_lines(block):
        # make targets run in the checkout, not in a user's working directory; their own tests run them
        # (test_compare: make study, test_gpu_check: make gpu-check, CI: make test).
        if line.lstrip().startswith(("#", "make ")):
            continue
        needs = _NEEDS_MARK.search(line)
        code, sep, comment = line.partition(" #")
        code = code.replace("<run>", "$(__latest_run)").replace("<stamp>", "$(__latest_stamp)")
        if needs:
            code = re.sub(r"(^\s*)(?=\S)", rf"\1CLIPDEHAZE_DOCS_NEEDS={needs.group(1)} ", code, count=1)
            code = _PLACEHOLDER.sub(lambda m: f"PLACEHOLDER-{m.group(1)}", code)
        if unknown := _PLACEHOLDER.findall(code):
            raise ValueError(f"unknown placeholder(s) {unknown} in a runnable doc command: {line.strip()}")
        lines.append(code)
    return "\n".join(lines) + "\n"


PREAMBLE = r"""
set -euo pipefail
__latest_stamp() { ls -1t outputs/train/multiruns | head -n 1; }
__latest_run() {
  local d
  d=$(ls -1td outputs/train/runs/*/ outputs/train/multiruns/*/*/ 2>/dev/null | while read -r x; do
        [ -f "$x/checkpoints/last.ckpt" ] && { echo "${x%/}"; break; }; done)
  [ -n "$d" ] || { echo "no training run with checkpoints/last.ckpt yet" >&2; return 1; }
  echo "$d"
}
"""


def preamble(python: str) -> str:
    fns = "\n".join(f'clipdehaze-{tool}() {{ "{python}" "{__file__}" run {tool} "$@"; }}' for tool in TOOLS)
    return PREAMBLE + fns + "\n"


# ----------------------------------------------------------------------------------------------------- fixtures
def _png(path: Path, seed: int, size: tuple[int, int] = (48, 64)) -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    small = rng.random((size[0] // 8, size[1] // 8, 3))
    img = Image.fromarray((small * 255).astype(np.uint8)).resize((size[1], size[0]), Image.BICUBIC)
    img.save(path)


def make_paper_datasets(data_dir: Path) -> list[str]:
    """Two or three tiny pairs per split in the layout of every paper data config (``conf/data``), under
    ``data_dir`` as ``paths.data_dir`` places them; returns the config names."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from omegaconf import OmegaConf

    from clipdehaze.utils.hydra_utils import register_with_hydra

    register_with_hydra()
    names = []
    for cfg_file in sorted((REPO / "conf" / "data").glob("*.yaml")):
        name = cfg_file.stem
        if name in ("paired",) or name.startswith("synthetic"):
            continue
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[f"data={name}", f"paths.data_dir={data_dir}",
                                               f"paths.root_dir={data_dir.parent}"])
        d = cfg.data
        if OmegaConf.is_missing(d, "root"):
            continue  # a data config the user points at their own folder (data=folder data.root=...)
        seed = len(names) * 100
        for split, root, list_file in (("train", d.root, d.get("train_list")),
                                       ("val", d.get("val_root") or d.root, d.get("val_list")),
                                       ("test", d.get("test_root") or d.root, d.get("test_list"))):
            if list_file:
                lines = []
                for k in range(3):
                    _png(Path(root) / "input" / f"{split}{k}.png", seed + k)
                    _png(Path(root) / "gt" / f"{split}{k}.png", seed + 50 + k)
                    lines.append(f"input/{split}{k}.png")
                (Path(root) / list_file).write_text("\n".join(lines) + "\n")
                continue
            sub = d.get(f"{split}_split")
            if sub is None and split == "val":
                sub = d.get("test_split")
            if sub is None:
                continue
            for k in range(3):
                _png(Path(root) / sub / d.input_dir / f"{k:04d}.png", seed + k)
                _png(Path(root) / sub / d.target_dir / f"{k:04d}.png", seed + 50 + k)
        names.append(name)
    GlobalHydra.instance().clear()
    return names


#: A few files of each ``clipdehaze-data prepare`` layout's official download (as its layout file describes it), made
#: where a documented prepare command names a download that is not there.
FAKE_DOWNLOADS = {
    "its": ["hazy/1_1_0.90179.png", "hazy/1_2_0.97842.png", "hazy/2_1_0.71234.png", "clear/1.png", "clear/2.png",
            "trans/1_1.png"],
    "ots": ["hazy/part1/0005_0.8_0.04.jpg", "hazy/part2/0006_1_0.2.jpg", "clear/0005.jpg", "clear/0006.jpg"],
    "sots_indoor": ["indoor/hazy/1400_1.png", "indoor/hazy/1400_2.png", "indoor/hazy/1401_1.png", "indoor/gt/1400.png",
                    "indoor/gt/1401.png", "outdoor/hazy/0001_0.8_0.2.jpg", "outdoor/gt/0001.png"],
    "haze4k": ["train/IN/1_0.68_0.66.png", "train/IN/2_0.59_1.95.png", "train/GT/1.png", "train/GT/2.png",
               "test/IN/1_0.89_1.56.png", "test/IN/2_0.93_1.66.png", "test/GT/1.png", "test/GT/2.png"],
    "dehazeformer": [f"{split}/{d}/{k:04d}.png" for split in ("train", "test") for d in ("hazy", "GT") for k in (1, 2)],
    "dense_haze": [f"{d}/{n:02d}_{d}.png" for d in ("hazy", "GT") for n in (1, 2, 45, 51, 52)],
    "nh_haze": [f"{n:02d}_{tag}.png" for tag in ("hazy", "GT") for n in (1, 2, 50, 51, 52)],
    "o_haze": [f"{d}/{n:02d}_outdoor_{d}.jpg" for d in ("hazy", "GT") for n in (1, 2, 40, 41, 42)],
}
FAKE_DOWNLOADS.update(sots_outdoor=FAKE_DOWNLOADS["sots_indoor"], reside6k=FAKE_DOWNLOADS["dehazeformer"],
                      rs_haze=FAKE_DOWNLOADS["dehazeformer"])


def provide_download(args: list[str]) -> None:
    """``clipdehaze-data prepare LAYOUT DOWNLOAD OUT``: a fake download in that layout where DOWNLOAD is missing; the
    split folders LAYOUT makes are removed from OUT when the harness's own paper datasets hold them (a user who
    prepares RESIDE-IN does not have it yet; prepare never replaces a folder)."""
    import shutil

    from clipdehaze.data.layouts import get_layout

    positional = [a for a in args[1:] if not a.startswith("-")]
    if len(positional) < 3 or positional[0] not in FAKE_DOWNLOADS:
        return
    layout, download, out = positional[0], Path(positional[1]), Path(positional[2])
    if not download.exists():
        for k, name in enumerate(FAKE_DOWNLOADS[layout]):
            _png(download / name, 60 + k)
    for split in get_layout(layout).splits:
        if (out / split).is_dir() and not (out / split).is_symlink():
            shutil.rmtree(out / split)


def make_weights_file(path: Path, model: str) -> None:
    """Random weights of ``model`` saved as the upstream repositories do ({"state_dict": {"module.<key>": ...}})."""
    import torch

    from clipdehaze.models import create_generator

    torch.manual_seed(0)
    sd = create_generator(model).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)


def _unquote(value: str) -> str:
    """A Hydra override value as the path it names (``"a b"`` quoted for Hydra's grammar -> ``a b``)."""
    if len(value) > 1 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1].replace("\\" + value[0], value[0])
    return value


def provide_user_files(args: list[str]) -> None:
    """What a user has before running a documented command: its ``weights_path=`` file, ``input=`` images, the
    photos of ``synth --source`` and the folder of ``data=paired data.root=``."""
    kv = {k: _unquote(v) for k, v in (a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))}
    weights = kv.get("weights_path")
    if weights and not Path(weights).exists() and kv.get("model"):
        make_weights_file(Path(weights), kv["model"])
    inp = kv.get("input")
    if inp and not Path(inp).exists():
        if Path(inp).suffix:
            _png(Path(inp), 7, (72, 96))
        else:
            for k in range(2):
                _png(Path(inp) / f"img{k}.jpg", 8 + k, (56, 80))
    if "--source" in args and not (source := Path(args[args.index("--source") + 1])).exists():
        for k in range(4):  # photos at least as large as synth's default 256-pixel patches
            _png(source / f"photo{k}.jpg", 20 + k, (288, 384))
    root = kv.get("data.root")
    if kv.get("data") == "folder" and root and not Path(root).exists():
        for k in range(2):  # photos without ground truth (NIQE needs two 96-pixel blocks; the README's synth
            _png(Path(root) / f"photo{k}.jpg", 50 + k, (288, 384))  # --source photos/ takes 256-pixel patches)
    if kv.get("data") not in (None, "folder", "paired") and root and not Path(root).exists():
        for k in range(2):  # a paper test set pointed at a folder holding its images directly
            _png(Path(root) / kv.get("data.input_dir", "hazy") / f"{1400 + k}_1.png", 70 + k)
            _png(Path(root) / kv.get("data.target_dir", "GT") / f"{1400 + k}.png", 80 + k)
    if kv.get("data") == "paired" and root and not Path(root).exists():
        for split in ("train", "test"):
            for k in range(3):
                _png(Path(root) / split / "hazy" / f"{k:04d}.png", 30 + k)
                _png(Path(root) / split / "GT" / f"{k:04d}.png", 40 + k)


def provide_shared_files(tool: str, args: list[str]) -> str | None:
    """The recorded trajectory a ``reproduce trajectory FILE`` command names, copied into the working directory from
    the project's shared/ folder (``$CLIPDEHAZE_SHARED``) as a user would have it; returns why the command cannot
    run (no shared/ folder, no such recording) or None."""
    import shutil

    if tool != "reproduce" or args[:1] != ["trajectory"] or len(args) < 2 or Path(args[1]).exists():
        return None
    shared = os.environ.get("CLIPDEHAZE_SHARED")
    if not shared:
        return (f"{args[1]} is a recording in the project's shared/ folder, not found: put shared/ beside the "
                "checkout or set CLIPDEHAZE_SHARED")
    source = Path(shared) / "reference" / "trajectories" / Path(args[1]).name
    if not source.is_file():
        return f"{args[1]} is not among the recordings of the project's shared/ folder ({source} does not exist)"
    Path(args[1]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, args[1])
    return None


# ----------------------------------------------------------------------------------------------------- runner
def shortened(tool: str, args: list[str]) -> list[str]:
    """``args`` with the tool's shortening appended; a key the command already sets gets the shortening's value."""
    if tool in SHORTENING_OPTIONS:
        options = SHORTENING_OPTIONS[tool]
        out, i = [], 0
        while i < len(args):
            if args[i] in options:  # drop the option and its values; the shortening's are appended
                i += 1
                while i < len(args) and not args[i].startswith("-"):
                    i += 1
                continue
            out.append(args[i])
            i += 1
        return out + [x for option, values in options.items() for x in (option, *values)]
    sub = args[0] if tool in SUBCOMMAND_TOOLS and args else None
    extra = SHORTENING.get(f"{tool} {sub}" if sub else tool, [])
    if tool == "reproduce":
        if args and args[0] == "trajectory":
            extra = SHORTENING.get("reproduce trajectory", [])
        elif any(a in args for a in REPRODUCE_QUIET):
            extra = []
        else:
            extra = SHORTENING["eval" if "--weights" in args else "train"]
    if any(a.startswith("hparams_search=") for a in args):
        extra = extra + SHORTENING_OPTUNA
    keys = {e.split("=", 1)[0] for e in extra}
    return [a for a in args if a.split("=", 1)[0].lstrip("+~") not in keys] + extra


def provide_reproduce_weights(args: list[str]) -> None:
    """The folder a ``clipdehaze-reproduce PAPER --table T --weights DIR`` names, as upstream's training saves
    weights (see :data:`REPRODUCE_WEIGHT_ROWS`)."""
    if "--weights" not in args or "--table" not in args or args[0].startswith("-"):
        return
    folder = Path(args[args.index("--weights") + 1])
    if folder.exists():
        return
    from clipdehaze.reproduce.recipes import papers

    paper = papers()[args[0]]
    for row in paper.table(args[args.index("--table") + 1]).rows[:REPRODUCE_WEIGHT_ROWS]:
        recipe = paper.recipes[row]
        (folder / recipe.saved_as).parent.mkdir(parents=True, exist_ok=True)
        make_weights_file(folder / recipe.saved_as, recipe.generator)


def run(tool: str, args: list[str]) -> int:
    needs = os.environ.pop("CLIPDEHAZE_DOCS_NEEDS", None)
    record = {"tool": f"clipdehaze-{tool}", "args": args, "cwd": os.getcwd(), "needs": needs}
    if (why := provide_shared_files(tool, args)) is not None:
        with open(os.environ["CLIPDEHAZE_DOCS_LOG"], "a") as f:
            f.write(json.dumps({**record, "returncode": None, "seconds": 0, "status": "skipped", "reason": why}) + "\n")
        sys.stderr.write(f"skipped: clipdehaze-{tool} {' '.join(args)}: {why}\n")
        return 0
    provide_user_files(args)
    if tool == "data" and args[:1] == ["prepare"]:
        provide_download(args)
    if tool == "reproduce":
        provide_reproduce_weights(args)
    cmd = [sys.executable, "-m", TOOLS[tool], *shortened(tool, args)]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    text = out.stdout + out.stderr
    record.update(returncode=out.returncode, seconds=round(time.perf_counter() - start, 1))
    ok = out.returncode == 0
    if needs:
        expected = NEEDS[needs]
        ok = out.returncode != 0 and expected in text
        record["expected"] = expected
    record["status"] = "ok" if ok else "FAILED"
    with open(os.environ["CLIPDEHAZE_DOCS_LOG"], "a") as f:
        f.write(json.dumps(record) + "\n")
    if not ok:
        sys.stderr.write(f"\n$ clipdehaze-{tool} {' '.join(args)}\n" + text[-6000:] + "\n")
        if needs:
            sys.stderr.write(f"expected to stop offline naming {NEEDS[needs]!r}\n")
        return 1
    sys.stdout.write(out.stdout[-2000:])
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "run":
        return run(argv[1], argv[2:])
    raise SystemExit(f"usage: {__file__} run TOOL ARGS...")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
