"""Run the commands the docs show, the way they show them (used by tests/test_docs_commands.py).

Every fenced ``bash`` block of README.md and experiments/**/README.md runs as bash, unchanged except for the
conventions below, in a fresh working directory outside the checkout, with HOME and every cache directory inside
the test's temporary directory. A doc runs in independent parts (:func:`parts`: a block's sections that read no
earlier run run apart, in parallel test workers); a command named in prose runs in a working directory of its
own, once even when several docs name it.

* ``clipdehaze-*`` are shell functions that run the installed console script (``.venv/bin/clipdehaze-*``, through
  tests/cli_server.py: a warm process forks per command, same argv, directory, environment and streams) in two
  steps. First **as written**: a Hydra command composes with exactly its documented arguments (``--cfg job
  --resolve``; a sweep once per value), an argparse command parses them; a shortened key (``clip=``,
  ``data.crop_size=`` ...) must compose to a value of the type its shortening has. Then **shortened**: the tool's
  :data:`SHORTENING` is appended (one short epoch, small crops, the tiny random CLIP, few test images); an
  override of a key the command sets replaces that value. Nothing else is added: never ``hydra.run.dir``,
  ``hydra.sweep.dir`` or ``paths.*``.
* ``<run>`` is the newest training run folder, and ``<stamp>`` the newest multirun folder's name, that a command
  which succeeded made (what a user copies from the previous command's output; a failed sweep's folder never).
* A command whose comment says ``(needs: X, Y)`` cannot run offline (:data:`NEEDS`). For each need it runs with
  the stand-ins of the others and must stop naming that need; then, when every need has a stand-in (a local
  random-weight ResNet-152 file for ``resnet152``, ``trainer=cpu`` for ``gpu``), it runs with all of them and
  must succeed, so the rest of the command is checked too.
* What the comments promise is checked (:data:`PROMISES`): a row count, a run count, the labels, the files after
  ``->``; and every training sweep, whatever its launcher, makes one multirun folder with one run dir per job.
* ``make`` lines are skipped: a make target runs in the checkout, and each has its own test.

The working directory holds what a user would have there: tiny paired datasets in every paper dataset's layout
under ``./data`` (the default ``paths.data_dir``), the published weights a command names with ``weights_path=``
(random values in the upstream format; for ``clipdehaze-reproduce --weights DIR``, a folder in upstream's
saved_models/ layout), the input photos a predict command names, the folder a paper test set's ``data.root=`` names,
the official download a ``clipdehaze-data prepare`` command names (:data:`FAKE_DOWNLOADS`), and the recorded
trajectory a ``clipdehaze-reproduce trajectory`` command names (copied from
``$CLIPDEHAZE_SHARED/reference/trajectories``; without the project's shared/ folder that command is skipped, with the
reason, and the doc's test reports the skip, or fails where ``CLIPDEHAZE_REQUIRE`` lists ``shared``).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import cli_server

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "experiments").rglob("README.md"))]
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Shortening:
    """How the harness shortens one tool (or ``"tool subcommand"``).

    ``overrides``: Hydra ``key=value`` appended (replacing a documented value of the same key). ``options``: argparse
    options and their values (a flag has none), replacing a documented option's values. ``shows_config``: the console
    script whose ``--cfg job`` composes this tool's Hydra overrides (itself for a ``hydra.main`` tool)."""

    overrides: tuple[str, ...] = ()
    options: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    shows_config: str | None = None

    def __iter__(self):
        """The Hydra overrides, so a test can pass ``*SHORTENING["train"]`` to a command of its own."""
        return iter(self.overrides)


_TRAIN = ("trainer.max_epochs=1", "trainer.max_steps=-1", "trainer.limit_train_batches=2",
          "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0",
          "trainer.check_val_every_n_epoch=1", "data.crop_size=48", "data.batch_size=2", "data.num_workers=0",
          "clip=tiny_random")
#: Per tool (``clipdehaze-<tool>``; ``"<tool> <subcommand>"`` for one subcommand). A tool without an entry runs
#: exactly as documented. The scan bench's profile of cliphaze_t (minutes) is covered by its own test.
SHORTENING: dict[str, Shortening] = {
    "train": Shortening(_TRAIN, shows_config="train"),
    "eval": Shortening(("trainer.limit_test_batches=2", "clip=tiny_random"), shows_config="eval"),
    "predict": Shortening(("clip=tiny_random",), shows_config="predict"),
    "data clip-cache": Shortening(("clip=tiny_random",), shows_config="train"),   # composes the train config
    "bench": Shortening(options={"--sizes": ("64",), "--mac-size": ("64",), "--repeats": ("1",), "--no-memory": (),
                                 "--no-profile": (), "--clip-model": ("clipdehaze_tiny",), "--train-batch": ("1",),
                                 "--train-crop": ("48",),   # 48: every generator's smallest input (MixCLDehazeNet: 37)
                                 # the side-by-side goal ratios time 1024² inference: test_table_bench covers them
                                 "--goal-repeats": ("0",)}),
    # 8 training steps of the recorded run: nothing to shorten.
    "reproduce trajectory": Shortening(),
}
#: ``clipdehaze-reproduce PAPER ...`` passes its overrides to the tool it runs: training a table gets the train
#: shortening, scoring weights (``--weights``) the eval one; --list, --dry-run and --render run nothing to shorten.
REPRODUCE_QUIET = ("--list", "--dry-run", "--render")
#: ``clipdehaze-reproduce ... --weights DIR`` with no DIR yet: what a user downloaded, in upstream's saved_models/
#: layout (<setting>/<model>.pth), random values; the table's first rows only (a partial download), so the command
#: also lists rows without weights.
REPRODUCE_WEIGHT_ROWS = 2
#: More shortening when a command selects an Optuna search (its trial count).
SHORTENING_OPTUNA = ("hydra.sweeper.n_trials=2",)


@dataclass(frozen=True)
class Need:
    """``(needs: NAME)``: ``says`` is what the command's output must contain when it stops for want of it;
    ``standin(tmp)`` the overrides that stand in for it (None: it has no stand-in), ``tmp`` a folder for files."""

    says: str
    standin: Callable[[Path], list[str]] | None = None


def _resnet152_file(tmp: Path) -> list[str]:
    """A random-weight torchvision ResNet-152 state dict in place of the ImageNet one (made once per folder)."""
    path = tmp / "resnet152-random.pth"
    if not path.is_file():
        import torch
        import torchvision

        torch.manual_seed(0)
        part = path.with_suffix(f".part{os.getpid()}")
        torch.save(torchvision.models.resnet152().state_dict(), part)
        os.replace(part, path)
    return [f"loss.weights_path={path}"]


NEEDS: dict[str, Need] = {
    "resnet152": Need("resnet152 ImageNet weights", _resnet152_file),   # the CR loss's frozen backbone
    "gpu": Need("needs a CUDA GPU", lambda tmp: ["trainer=cpu"]),      # trainer=gpu (or an experiment's) without one
    "slurm": Need("are you indeed on a slurm cluster"),                # submitit_slurm off a cluster
}

_PLACEHOLDER = re.compile(r"<([A-Za-z][\w-]*)>")
_NEEDS_MARK = re.compile(r"\(needs: ([\w-]+(?:, *[\w-]+)*)\)")
#: The harness's own variables: set by the doc scripts for the harness, never seen by a command.
HARNESS_ENV = ("CLIPDEHAZE_DOCS_LOG", "CLIPDEHAZE_DOCS_SERVER", "CLIPDEHAZE_DOCS_NEEDS", "CLIPDEHAZE_DOCS_SAYS",
               "CLIPDEHAZE_DOCS_TMP")


def tools() -> list[str]:
    """The console scripts of the installed clipdehaze, without the ``clipdehaze-`` prefix."""
    from importlib import metadata

    return sorted(e.name.removeprefix("clipdehaze-") for e in metadata.distribution("clipdehaze").entry_points
                  if e.group == "console_scripts" and e.name.startswith("clipdehaze-"))


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
    """A doc block as the bash the harness runs: placeholders resolved at run time; needs-markers and what the
    comments say about a command (its own comment and the comment lines above it, one per line) passed as variables.
    Comment lines apply to the commands below them up to a blank line or the next comment."""
    lines, above, after_command = [], [], False
    for line in logical_lines(block):
        stripped = line.strip()
        if stripped.startswith("#"):
            if after_command:
                above, after_command = [], False
            above.append(stripped.lstrip("# "))
            continue
        if not stripped:
            above, after_command = [], False
        # make targets run in the checkout, not in a user's working directory; their own tests run them
        # (test_compare: make study, test_gpu_check: make gpu-check, CI: make test).
        if stripped.startswith("make "):
            continue
        code, _, comment = line.partition(" #")
        code = code.replace("<run>", "$(__latest run)").replace("<stamp>", "$(__latest stamp)")
        marks = []
        if needs := _NEEDS_MARK.search(comment):
            marks.append(f"CLIPDEHAZE_DOCS_NEEDS={needs.group(1).replace(' ', '')}")
            code = _PLACEHOLDER.sub(lambda m: f"PLACEHOLDER-{m.group(1)}", code)
        if "clipdehaze-" in code:
            after_command = True
            if says := "\n".join([*above, comment.strip().lstrip("# ")]).strip():
                marks.append(f"CLIPDEHAZE_DOCS_SAYS={shlex.quote(says)}")
        if unknown := _PLACEHOLDER.findall(code):
            raise ValueError(f"unknown placeholder(s) {unknown} in a runnable doc command: {stripped}")
        if marks:
            code = re.sub(r"(^\s*)(?=\S)", lambda m: m.group(1) + " ".join(marks) + " ", code, count=1)
        lines.append(code)
    return "\n".join(lines) + "\n"


PREAMBLE = r"""
set -euo pipefail
__latest() { "$__PY" "$__HARNESS" latest "$1"; }
"""


def preamble(python: str = sys.executable) -> str:
    fns = "\n".join(f'clipdehaze-{tool}() {{ "$__PY" "$__HARNESS" run {tool} "$@"; }}' for tool in tools())
    return f"__PY={shlex.quote(python)}\n__HARNESS={shlex.quote(__file__)}\n" + PREAMBLE + fns + "\n"


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


def make_weights_file(path: Path, model: str) -> None:
    """Random weights of ``model`` saved as the upstream repositories do ({"state_dict": {"module.<key>": ...}})."""
    import torch

    from clipdehaze.models import create_generator

    torch.manual_seed(0)
    sd = create_generator(model).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)


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
    prepares RESIDE-IN does not have it yet; prepare never replaces a folder). ``./data`` is a tree of hard links
    to the session's datasets: removing a folder there never touches them."""
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


def provide_reproduce_weights(args: list[str]) -> None:
    """The folder a ``clipdehaze-reproduce PAPER --table T --weights DIR`` names, as upstream's training saves
    weights (see :data:`REPRODUCE_WEIGHT_ROWS`)."""
    if "--weights" not in args or "--table" not in args or not args or args[0].startswith("-"):
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


def _needs_a_generator(tool: str, args: list[str]) -> bool:
    """Whether providing the user's files builds a generator (torch imported: done in a forked command process)."""
    kv = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
    if kv.get("weights_path") and kv.get("model") and not Path(_unquote(kv["weights_path"])).exists():
        return True
    return (tool == "reproduce" and "--weights" in args and "--table" in args
            and not Path(args[args.index("--weights") + 1]).exists())


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


# ----------------------------------------------------------------------------------------------------- shortening
def _key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def shortening_of(tool: str, args: list[str]) -> Shortening:
    sub = args[0] if args and not args[0].startswith("-") and "=" not in args[0] else None
    if tool == "reproduce" and sub != "trajectory":
        if any(a in args for a in REPRODUCE_QUIET):
            return Shortening()
        return Shortening(SHORTENING["eval" if "--weights" in args else "train"].overrides)
    return SHORTENING.get(f"{tool} {sub}") or SHORTENING.get(tool) or Shortening()


def shortened(tool: str, args: list[str], extra: list[str] = ()) -> list[str]:
    """``args`` with the tool's shortening (and ``extra`` overrides, e.g. stand-ins) appended; a key the command
    already sets gets the appended value."""
    short = shortening_of(tool, args)
    if short.options:
        out, i = [], 0
        while i < len(args):
            if args[i] in short.options:  # drop the option and its values; the shortening's are appended
                i += 1
                while i < len(args) and not args[i].startswith("-"):
                    i += 1
                continue
            out.append(args[i])
            i += 1
        return out + [x for option, values in short.options.items() for x in (option, *values)] + list(extra)
    added = [*short.overrides, *extra]
    if any(a.startswith("hparams_search=") for a in args):
        added += SHORTENING_OPTUNA
    keys = {_key(e) for e in added}
    return [a for a in args if _key(a) not in keys] + added


#: Hydra options with which a command prints something (help, a config) instead of running: it runs as written.
_SHOWS_SOMETHING_ELSE = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}


def as_written_runs(tool: str, args: list[str]) -> list[tuple[str, list[str], bool]]:
    """The commands that check ``args`` as written: (console script, arguments, parse only). A Hydra tool shows its
    config once per sweep value (``-m`` dropped: ``--cfg`` composes one job); an argparse tool with shortened
    options parses its command line."""
    short = shortening_of(tool, args)
    if short.options:
        return [(tool, args, True)]
    if tool == "reproduce" and args and args[0] != "trajectory" and short.overrides:
        # a table it would train or score: its dry run composes every row's job with the documented overrides
        return [(tool, [*args, "--dry-run"], False)]
    if not short.shows_config or set(args) & _SHOWS_SOMETHING_ELSE:
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    fixed, sweeps = [], []
    own = args[1:] if short.shows_config != tool else args   # a subcommand's overrides follow its name
    for arg in own:
        if arg in ("-m", "--multirun"):
            continue
        override = parser.parse_override(arg) if "=" in arg and not arg.startswith("-") else None
        if override is not None and override.is_sweep_override():
            if override.is_interval_sweep():
                continue   # a search space for the sweeper, not a value
            sweeps.append((override.get_key_element(), list(override.sweep_string_iterator())))
        else:
            fixed.append(arg)
    jobs = max((len(values) for _, values in sweeps), default=1)
    return [(short.shows_config, [*fixed, *(f"{k}={v[i % len(v)]}" for k, v in sweeps), "--cfg", "job", "--resolve"],
             False) for i in range(jobs)]


def _value_type(value) -> str:
    return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__


def shortened_key_problems(tool: str, args: list[str], composed: dict) -> list[str]:
    """Documented values of shortened keys that compose to another type than the shortening's value (a typo the
    shortened run would never see)."""
    import yaml

    problems = []
    documented = {_key(a): a for a in args if "=" in a and not a.startswith("-")}
    for override in shortening_of(tool, args).overrides:
        key, value = override.split("=", 1)
        if key not in documented or "/" in key:
            continue
        node = composed
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        want = yaml.safe_load(value)
        if isinstance(want, str):
            continue   # a config group choice: composing it is the check
        if node is None or _value_type(node) != _value_type(want):
            problems.append(f"{documented[key]} as written composes {key} to {node!r} ({type(node).__name__}), "
                            f"where the shortening sets {want!r} ({type(want).__name__})")
    return problems


# ----------------------------------------------------------------------------------------------------- runner
@dataclass
class Step:
    """One run of a documented command (as written, shortened, or for a need), and what it printed."""

    argv: list[str]
    returncode: int
    output: str
    seconds: float
    fresh: str | None


class Runner:
    """Runs the console scripts for the doc script's shell functions: through the command server named in the
    environment (else as fresh processes), with the harness's own variables removed."""

    def __init__(self, env: Mapping[str, str]):
        self.server = env.get("CLIPDEHAZE_DOCS_SERVER") or None
        self.env = {k: v for k, v in env.items() if k not in HARNESS_ENV}
        self.steps: list[Step] = []

    def __call__(self, tool: str, args: list[str], *, parse_only: bool = False, timeout: float = 1800) -> Step:
        script = BIN / f"clipdehaze-{tool}"
        if not script.is_file():
            raise SystemExit(f"{script} is not installed (pip install -e . installs the console scripts)")
        return self.script([str(script), *args], parse_only=parse_only, timeout=timeout)

    def script(self, argv: list[str], *, parse_only: bool = False, timeout: float = 1800) -> Step:
        start = time.perf_counter()
        with tempfile.TemporaryFile("w+") as out:
            code, fresh = cli_server.run(argv, cwd=os.getcwd(), env=self.env, server=self.server,
                                         stdin=sys.stdin.fileno(),
                                         stdout=out.fileno(), stderr=out.fileno(), timeout=timeout,
                                         parse_only=parse_only)
            out.seek(0)
            text = out.read()
        step = Step(argv, code, text, round(time.perf_counter() - start, 1), fresh)
        self.steps.append(step)
        return step


def _runs_and_sweeps(cwd: Path) -> tuple[set[str], set[str]]:
    """Training run folders with a last.ckpt, and training multirun folders, under ``cwd``."""
    runs = {str(p.parent.parent) for pattern in ("outputs/train/runs/*/checkpoints/last.ckpt",
                                                  "outputs/train/multiruns/*/*/checkpoints/last.ckpt")
            for p in cwd.glob(pattern)}
    sweeps = {str(p) for p in cwd.glob("outputs/train/multiruns/*") if p.is_dir()}
    return runs, sweeps


def _written_since(cwd: Path, start: float) -> list[Path]:
    return [Path(d) / f for d, _, files in os.walk(cwd) for f in files
            if os.stat(Path(d) / f).st_mtime >= start - 1]


def run(tool: str, args: list[str]) -> int:
    """One documented command, called by the doc script's ``clipdehaze-<tool>`` function."""
    needs = [n for n in os.environ.get("CLIPDEHAZE_DOCS_NEEDS", "").split(",") if n]
    says = os.environ.get("CLIPDEHAZE_DOCS_SAYS", "")
    tmp = Path(os.environ.get("CLIPDEHAZE_DOCS_TMP") or tempfile.gettempdir())
    runner = Runner(os.environ)
    cwd = Path.cwd()
    record = {"tool": f"clipdehaze-{tool}", "args": args, "cwd": str(cwd), "needs": needs, "says": says}
    problems: list[str] = []
    start = time.time()
    before = _runs_and_sweeps(cwd)

    if (why := provide_shared_files(tool, args)) is not None:
        record.update(status="skipped", reason=why, seconds=0, steps=[], runs=[], sweeps=[])
        with open(os.environ["CLIPDEHAZE_DOCS_LOG"], "a") as f:
            f.write(json.dumps(record) + "\n")
        sys.stderr.write(f"skipped: clipdehaze-{tool} {' '.join(args)}: {why}\n")
        return 0
    if _needs_a_generator(tool, args):
        provide = runner.script([__file__, "provide", tool, *args])   # builds a generator: where torch is imported
        if provide.returncode:
            problems.append(f"providing the user's files failed:\n{provide.output[-3000:]}")
    else:
        provide_user_files(args)
    if tool == "data" and args[:1] == ["prepare"]:
        provide_download(args)

    # 1. As written: composes (Hydra) or parses (argparse) with exactly the documented arguments.
    for check_tool, check_args, parse_only in ([] if problems else as_written_runs(tool, args)):
        step = runner(check_tool, check_args, parse_only=parse_only)
        if step.returncode:
            problems.append(f"as written, `clipdehaze-{check_tool} {' '.join(check_args)}` fails:\n"
                            f"{step.output[-4000:]}")
        elif not parse_only and "--cfg" in check_args:
            import yaml

            problems += shortened_key_problems(tool, args, yaml.safe_load(step.output) or {})

    # 2. Shortened: for each need, stopped by it (the others stood in for); then past every need.
    final = None
    if not problems:
        for need in needs:
            if need not in NEEDS:
                problems.append(f"(needs: {need}) is not a known need: {sorted(NEEDS)}")
                continue
            others = [x for n in needs if n != need and n in NEEDS and NEEDS[n].standin for x in NEEDS[n].standin(tmp)]
            step = runner(tool, shortened(tool, args, others))
            if step.returncode == 0 or NEEDS[need].says not in step.output:
                problems.append(f"(needs: {need}): expected to stop naming {NEEDS[need].says!r}, but it "
                                f"{'succeeded' if step.returncode == 0 else f'exited {step.returncode} without it'}:"
                                f"\n{step.output[-4000:]}")
        if not problems and all(n in NEEDS and NEEDS[n].standin for n in needs):
            standins = [x for n in needs for x in NEEDS[n].standin(tmp)]
            before = _runs_and_sweeps(cwd)   # what this run makes, not a stopped run's folders
            final = runner(tool, shortened(tool, args, standins))
            if final.returncode:
                hint = [n for n, need in NEEDS.items() if n not in needs and need.says in final.output]
                problems.append(f"exited {final.returncode}" + (f" (with the stand-ins of {', '.join(needs)})"
                                                                 if needs else "") + ":\n" + final.output[-6000:]
                                + (f"\nit stops naming {hint[0]!r}: add it to the (needs: ...) marker" if hint else ""))

    # 3. What the comments promise.
    after = _runs_and_sweeps(cwd)
    new_runs, new_sweeps = sorted(after[0] - before[0]), sorted(after[1] - before[1])
    if final is not None and not problems:
        context = Context(tool, args, cwd, final.output, _written_since(cwd, start), new_runs, new_sweeps, runner)
        if tool == "train" and ("-m" in args or "--multirun" in args):
            try:
                _one_dir_per_job(context)
            except AssertionError as e:
                problems.append(f"a multirun as documented: {e}")
        for line in says.splitlines():
            for pattern, applies_to, check in PROMISES:
                if (m := re.search(pattern, line)) and (not applies_to or tool in applies_to):
                    try:
                        check(context, m)
                    except AssertionError as e:
                        problems.append(f"the docs say {m.group(0)!r}: {e}")

    ok = not problems
    record.update(status="ok" if ok else "FAILED", seconds=round(time.time() - start, 1),
                  steps=[{"argv": s.argv[1:], "returncode": s.returncode, "seconds": s.seconds, "fresh": s.fresh}
                         for s in runner.steps],
                  runs=new_runs if ok and final is not None else [],
                  sweeps=new_sweeps if ok and final is not None else [])
    with open(os.environ["CLIPDEHAZE_DOCS_LOG"], "a") as f:
        f.write(json.dumps(record) + "\n")
    if not ok:
        sys.stderr.write(f"\n$ clipdehaze-{tool} {' '.join(args)}\n" + "\n".join(problems) + "\n")
        return 1
    if final is not None:
        sys.stdout.write(final.output[-2000:])
    return 0


def latest(kind: str) -> int:
    """``<run>`` / ``<stamp>``: from the newest command that succeeded and made one."""
    records = [json.loads(line) for line in Path(os.environ["CLIPDEHAZE_DOCS_LOG"]).read_text().splitlines()] \
        if Path(os.environ["CLIPDEHAZE_DOCS_LOG"]).exists() else []
    key = {"run": "runs", "stamp": "sweeps"}[kind]
    for r in reversed(records):
        if r["status"] == "ok" and r[key]:
            newest = max(r[key], key=lambda p: os.stat(p).st_mtime)
            print(Path(newest).relative_to(r["cwd"]) if kind == "run" else Path(newest).name)
            return 0
    what = "training run with checkpoints/last.ckpt" if kind == "run" else "training multirun"
    sys.stderr.write(f"no command that succeeded made a {what} yet\n")
    return 1


# ----------------------------------------------------------------------------------------------------- promises
@dataclass
class Context:
    """What a promise check sees of a command that succeeded (shortened, with any stand-ins)."""

    tool: str
    args: list[str]
    cwd: Path
    output: str
    written: list[Path]
    runs: list[str]
    sweeps: list[str]
    runner: Runner

    def table_rows(self) -> list[dict]:
        """The rows of runs in the table this command wrote, or (a training sweep) of ``clipdehaze-table`` on its
        sweep."""
        if self.tool == "table":
            tables = [p for p in self.written if p.name == "table.csv"]
            assert len(tables) == 1, f"it wrote {len(tables)} table.csv files"
            path = tables[0]
        else:
            assert len(self.sweeps) == 1, f"it made {len(self.sweeps)} multirun folders"
            out = Path(tempfile.mkdtemp(dir=self.cwd.parent))
            step = self.runner("table", [self.sweeps[0], "--out", str(out)])
            assert step.returncode == 0, f"clipdehaze-table on its sweep failed:\n{step.output[-3000:]}"
            path = out / "table.csv"
        with open(path, newline="") as f:
            return [r for r in csv.DictReader(f) if r.get("n")]   # our rows (--paper adds published ones, n empty)

    def jobs(self) -> list[Path]:
        assert len(self.sweeps) == 1, f"it made {len(self.sweeps)} multirun folders"
        return sorted(p.parent for p in Path(self.sweeps[0]).glob("*/metrics.json"))


_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}


def _number(word: str) -> int:
    return int(word) if word.isdigit() else _NUMBERS[word.lower()]


def _rows(ctx: Context, m: re.Match) -> None:
    rows = ctx.table_rows()
    assert len(rows) == _number(m.group(1)), f"{len(rows)} rows: {[r.get('variant') for r in rows]}"


def _seeds(ctx: Context, m: re.Match) -> None:
    rows = ctx.table_rows()
    assert {r["n"] for r in rows} == {str(_number(m.group(1)))}, f"n per row: {[r['n'] for r in rows]}"


def _runs(ctx: Context, m: re.Match) -> None:
    jobs = ctx.jobs()
    assert len(jobs) == _number(m.group(1)), f"{len(jobs)} jobs with metrics.json: {[p.name for p in jobs]}"


def _row_per_variant(ctx: Context, m: re.Match) -> None:
    """A row per set of sweep values other than the seed, each averaging its seeds."""
    import yaml

    rows = ctx.table_rows()
    variants: dict[tuple, int] = {}
    for metrics in (ctx.cwd / ctx.args[0]).glob("*/metrics.json"):
        overrides = yaml.safe_load((metrics.parent / ".hydra" / "overrides.yaml").read_text())
        key = tuple(sorted(o for o in overrides if _key(o) != "seed"))
        variants[key] = variants.get(key, 0) + 1
    assert len(rows) == len(variants), f"{len(rows)} rows for {len(variants)} variants: {sorted(variants)}"
    assert sorted(int(r["n"]) for r in rows) == sorted(variants.values()), [r["n"] for r in rows]


def _every_combination(ctx: Context, m: re.Match) -> None:
    """One job per combination of the sweep's values, each in a run dir of its own."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    combos = 1
    for arg in ctx.args:
        if "=" in arg and not arg.startswith("-") and (o := parser.parse_override(arg)).is_sweep_override():
            combos *= len(list(o.sweep_string_iterator()))
    jobs = ctx.jobs()
    assert len(jobs) == combos, f"{len(jobs)} jobs for {combos} combinations"


def _one_dir_per_job(ctx: Context) -> None:
    """Every documented training sweep, whatever its launcher: one multirun folder under ./outputs, one run dir and
    metrics.json per job, each job's output_dir its own, and the jobs' swept values all different."""
    import yaml

    jobs = ctx.jobs()
    assert jobs, "no job wrote metrics.json"
    summaries = [json.loads((job / "metrics.json").read_text()) for job in jobs]
    assert [s["config"]["paths"]["output_dir"] for s in summaries] == [str(j) for j in jobs], \
        "jobs did not each write into their own run dir"
    overrides = [tuple(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())) for job in jobs]
    if any(a.startswith("hparams_search=") for a in ctx.args):   # the sweeper picks the values: they must vary
        swept = [json.dumps(s["config"]["optimizer"], sort_keys=True) for s in summaries]
        assert len(set(swept)) == len(jobs), f"{len(jobs)} trials, {len(set(swept))} distinct optimizer settings"
    else:
        assert len(set(overrides)) == len(jobs), f"two jobs ran the same overrides: {overrides}"


def _labelled_by_the_switches(ctx: Context, m: re.Match) -> None:
    """Each row's label names every key in which the sweep's jobs differ (the seed aside), and no two are alike."""
    import yaml

    rows = ctx.table_rows()
    values: dict[str, set] = {}
    for metrics in (ctx.cwd / ctx.args[0]).glob("*/metrics.json"):
        for override in yaml.safe_load((metrics.parent / ".hydra" / "overrides.yaml").read_text()):
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    switches = sorted(k.rsplit(".", 1)[-1] for k, v in values.items() if len(v) > 1 and k != "seed")
    labels = [r["variant"] for r in rows]
    assert switches and len(set(labels)) == len(labels), f"labels {labels}"
    assert all(all(f"{k}=" in label for k in switches) for label in labels), f"labels {labels}, switches {switches}"


def _file_names(listing: str) -> list[str]:
    """``table.md, .csv, dir/t.md/.tex, runs/{0,1}`` -> the names, up to the first item that is prose."""
    names, stem = [], ""
    for item in (s.strip() for s in re.split(r",(?![^{]*\})", re.sub(r"\([^)]*\)", "", listing))):
        if not re.fullmatch(r"[\w<>{}.,/-]+", item) or ("." not in item and "/" not in item):
            break
        first, *extensions = item.split("/.")
        if first.startswith("."):
            first = stem + first
        names.append(first)
        stem = first.rsplit(".", 1)[0] if "." in Path(first).name else first
        names += [f"{stem}.{ext}" for ext in extensions]
    return names


def _files(ctx: Context, m: re.Match) -> None:
    """``-> a.md, .csv, dir/{0,1}, other.png``: the files (or folders) a command says it writes. A bare name must be
    among the files it wrote, a path must exist (``<stamp>``: the multirun it made). An arrow followed by prose
    promises no file."""
    names = _file_names(m.group(1))   # none: the arrow points at prose ("ITS -> SOTS-indoor")
    written = {p.name for p in ctx.written}
    missing = []
    for name in names:
        if ctx.sweeps:
            name = name.replace("<stamp>", Path(ctx.sweeps[0]).name)
        parts = re.split(r"\{([^}]*)\}", name)
        expanded = [parts[0]]
        for i in range(1, len(parts), 2):
            expanded = [e + choice + parts[i + 1] for e in expanded for choice in parts[i].split(",")]
        missing += [p for p in expanded if not ((ctx.cwd / p).exists() if "/" in p else p in written)]
    assert not missing, f"not written: {missing}"


#: (pattern searched in each line the comments say about a command, the tools it applies to, its check). Only
#: commands that succeeded are checked; a training sweep's rows are those of clipdehaze-table on it.
PROMISES: list[tuple[str, tuple[str, ...], Callable[[Context, re.Match], None]]] = [
    (r"\bone row per variant\b", ("table",), _row_per_variant),
    (r"\b(one|two|three|four|five|six|\d+) rows?\b(?! per)", ("train", "table"), _rows),
    (r"\b(one|two|three|\d+) seeds\b", ("train", "table"), _seeds),
    (r"\b(one|two|three|four|five|six|\d+) (?:runs|variants, one run each)\b", ("train",), _runs),
    (r"\bevery combination\b", ("train",), _every_combination),
    (r"\blabelled by the switches\b", ("table",), _labelled_by_the_switches),
    (r"->\s*(.+)", (), _files),
]


# ----------------------------------------------------------------------------------------------------- a doc
def link_tree(src: Path, dst: Path) -> None:
    """``src`` copied to ``dst`` as hard links (generated read-only inputs: datasets, caches)."""
    import shutil

    shutil.copytree(src, dst, copy_function=os.link, dirs_exist_ok=True)


#: Neighbouring parts of a doc join while they hold at most this many commands together.
MAX_PART_COMMANDS = 8


@dataclass
class Part:
    """Commands of one doc that run together, in one working directory, independently of the doc's other parts.

    A fenced block splits at its blank lines into sections; a section whose first ``<run>`` / ``<stamp>`` comes
    before its own first ``clipdehaze-train`` reads an earlier section's run, so it joins the part before it;
    neighbours join while small (:data:`MAX_PART_COMMANDS`). The commands named in prose form one part of their
    own, each in a fresh directory."""

    doc: str                  # the doc's name (its path in the checkout)
    line: int                 # where the part starts in the doc (0: the prose commands)
    scripts: list[str]        # bash snippets (as written), run in order
    commands: list[str]       # the clipdehaze commands it shows: each must run

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}" if self.line else f"{self.doc}:prose"

    @property
    def prose(self) -> bool:
        return self.line == 0


def parts(text: str, doc: str) -> list[Part]:
    """The independent parts of a Markdown text, in order (see :class:`Part`)."""
    found: list[Part] = []
    for m in re.finditer(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        line = text.count("\n", 0, m.start(1)) + 1
        sections, current, start = [], [], line
        for i, raw in enumerate(m.group(1).splitlines()):
            if raw.strip() or not current:
                if not current:
                    start = line + i
                current.append(raw)
            else:
                sections.append((start, "\n".join(current) + "\n"))
                current = []
        if current:
            sections.append((start, "\n".join(current) + "\n"))
        for start, section in sections:
            if not commands_in(section):
                continue
            code = "\n".join(ln.split(" #", 1)[0] for ln in logical_lines(section) if not ln.lstrip().startswith("#"))
            first_use = min((code.find(p) for p in ("<run>", "<stamp>") if p in code), default=-1)
            first_train = code.find("clipdehaze-train")
            reads_earlier = first_use >= 0 and (first_train < 0 or first_use < first_train)
            if reads_earlier and found:
                found[-1].scripts.append(section)
                found[-1].commands += commands_in(section)
            else:
                found.append(Part(doc, start, [section], commands_in(section)))
    # Neighbours join while small: each part pays a command server's start-up (seconds), parts only need to be
    # small enough for the test workers to share the docs evenly.
    merged: list[Part] = []
    for part in found:
        if merged and len(merged[-1].commands) + len(part.commands) <= MAX_PART_COMMANDS:
            merged[-1].scripts += part.scripts
            merged[-1].commands += part.commands
        else:
            merged.append(part)
    found = merged
    shown = {c for p in found for c in p.commands}
    # Prose names some commands again (and again): each distinct one runs once.
    inline = [c for c in dict.fromkeys(inline_commands(text)) if c not in shown]
    if inline:
        found.append(Part(doc, 0, inline, inline))
    return found


@dataclass
class DocRun:
    failures: list[str]      # a script that exited non-zero, with its output
    records: list[dict]      # one per documented command run


def run_part(part: Part, tmp: Path, env: Mapping[str, str], *, data: Path | None = None, cache: Path | None = None,
             standins: Path | None = None, once: Path | None = None, timeout: float = 3600) -> DocRun:
    """Run a part as the docs test does: its scripts in order in ``tmp/work`` (the user's working directory:
    ``data`` linked in as ./data; a prose part: each command in a fresh one), HOME and caches in ``tmp``
    (``cache``'s datasets and kernels linked into CLIPDEHAZE_CACHE), ``env`` otherwise, with one command server.
    ``standins``: where stand-in files are made (shared by the docs). ``once``: a folder shared by the docs in
    which a prose command claims its text, so a command several docs name runs once (the first doc to reach it
    runs it; a failure fails that doc)."""
    import hashlib

    import isolation

    if cache is not None:
        link_tree(cache, tmp / "cache")
    log = tmp / "commands.jsonl"
    env = {k: v for k, v in env.items() if k not in ("CLIPDEHAZE_DATA_DIR", "CLIPDEHAZE_LOG_DIR")}
    env.update(isolation.cache_environ(tmp / "home", tmp / "cache"))
    scripts = []
    for i, snippet in enumerate(part.scripts):
        if part.prose and once is not None:
            try:
                os.close(os.open(once / hashlib.sha256(snippet.encode()).hexdigest(), os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                with open(log, "a") as f:
                    f.write(json.dumps({"tool": snippet.split()[0], "args": snippet.split()[1:], "status": "ok",
                                        "seconds": 0, "steps": [], "ran": "for another doc"}) + "\n")
                continue
        scripts.append((tmp / (f"work-{i}" if part.prose else "work"), to_script(snippet)))
    failures = []
    server = cli_server.start_server(env, tmp / "cli-server.log") if scripts else None
    script_env = {**env, "CLIPDEHAZE_DOCS_LOG": str(log), "CLIPDEHAZE_DOCS_TMP": str(standins or tmp),
                  "CLIPDEHAZE_DOCS_SERVER": server.address if server else ""}
    try:
        for work, script in scripts:   # outside the checkout, as a user's working directory
            if not work.exists():
                work.mkdir(parents=True)
                if data is not None:
                    link_tree(data, work / "data")
            res = subprocess.run(["bash", "-c", preamble() + script], cwd=work, env=script_env, capture_output=True,
                                 text=True, timeout=timeout)
            if res.returncode != 0:
                failures.append(f"--- script exited {res.returncode}:\n{script}\n{res.stderr[-8000:]}")
    finally:
        if server:
            server.close()
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return DocRun(failures, records)


# ----------------------------------------------------------------------------------------------------- driver
def main(argv: list[str]) -> int:
    if argv and argv[0] == "run":
        return run(argv[1], argv[2:])
    if argv and argv[0] == "latest":
        return latest(argv[1])
    if argv and argv[0] == "provide":   # run in a forked command process: torch is already imported there
        provide_user_files(argv[2:])
        if argv[1] == "reproduce":
            provide_reproduce_weights(argv[2:])
        return 0
    raise SystemExit(f"usage: {__file__} run TOOL ARGS... | latest run|stamp | provide TOOL ARGS...")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
