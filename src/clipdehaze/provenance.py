"""Where a number came from: the scored images, the weights, the code, the software and the configuration.

Every ``metrics.json`` that ``clipdehaze-train`` / ``clipdehaze-eval`` write carries these fields, and
``clipdehaze-table`` groups and flags runs by them (:mod:`clipdehaze.runs`):

* ``dataset``: the data config's name, how many images were scored out of how many the split has (``subset``
  when fewer), and ``manifest_sha256``, the sha256 of the sorted (path relative to the dataset root, file size)
  list of every scored input and target file. Two folders that hold different images never share it; the same
  images copied elsewhere do. ``train_manifest_sha256`` is the same over the training pairs.
* ``weights``: ``origin`` (``trained`` / ``checkpoint`` / ``published`` / ``external`` / ``random`` / ``none``
  for parameter-free priors), the file and its sha256. A ``weights_path=`` file is ``published`` only when its
  sha256 is a release a paper's recipe table lists (``experiments/<paper>/recipes.yaml``, ``releases``: the
  record then names it and its source); any other file is ``external``.
* ``code``: package version, git commit and dirty flag when running from a checkout.
* ``environment``: Python, torch, CUDA and cuDNN versions, the device the numbers were computed on.
* ``config_sha256``: sha256 of the resolved configuration (an evaluation: its own and its checkpoint's training
  configuration) without its run-location keys (:func:`is_run_location_key`): two runs of the same variant and
  seed share it, wherever they ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

def is_run_location_key(key: str) -> bool:
    """True for a flattened config key that describes where or how a run happened rather than what it computed
    (class ``execution`` or ``location`` in :mod:`clipdehaze.runs.keys`, where every key is classified)."""
    from clipdehaze.runs.keys import is_run_location_key as declared

    return declared(key)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": leaf}``; lists and other leaves are kept as values (JSON-comparable)."""
    if isinstance(cfg, Mapping):
        out: dict[str, Any] = {}
        if not cfg and prefix:
            return {prefix: {}}
        for k, v in cfg.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: cfg}


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_sha256(config: Mapping[str, Any], train_config: Mapping[str, Any] | None = None) -> str:
    """sha256 of the resolved config without run-location keys (seed included); an evaluation of a checkpoint
    hashes its own config and the checkpoint's training config, each without its run-location keys."""
    def kept(cfg: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in flatten(cfg).items() if not is_run_location_key(k)}

    return _sha256_json({"eval": kept(config), "train": kept(train_config)} if train_config is not None
                        else kept(config))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------- dataset
def _base_dataset(ds: Any) -> Any:
    return getattr(ds, "dataset", ds)  # subset_of wraps in a Subset


def _dataset_root(base: Any) -> Path | None:
    root = getattr(base, "root", None)
    return Path(root) if root is not None else None


def manifest_sha256(files: Iterable[Path], root: Path | None) -> str:
    """sha256 of the sorted (path relative to ``root``, size in bytes) of ``files``."""
    entries = []
    for f in files:
        f = Path(f)
        try:
            name = f.relative_to(root).as_posix() if root is not None else f.name
        except ValueError:
            name = f.as_posix()
        entries.append((name, f.stat().st_size if f.exists() else -1))
    return _sha256_json(sorted(entries))


def _pair_files(base: Any, indices: Iterable[int]) -> list[Path]:
    pairs = getattr(base, "pairs", [])
    return [p for i in indices for p in pairs[i] if p is not None]


def dataset_provenance(datamodule: Any, scored_indices: Iterable[int] | None) -> dict[str, Any]:
    """The ``dataset`` field: name, images scored / available, and the manifest hashes (see the module doc).

    ``scored_indices`` are the dataset indices the metric actually saw (a ``limit_test_batches`` or
    ``max_test_samples`` run scores fewer than the split holds and is marked ``subset``)."""
    out: dict[str, Any] = {"name": getattr(datamodule, "name", None)}
    test = getattr(datamodule, "test_set", None)
    if test is not None and scored_indices is not None:
        base = _base_dataset(test)
        indices = sorted(set(int(i) for i in scored_indices))
        out.update(images=len(indices), available=len(base), subset=len(indices) < len(base),
                   manifest_sha256=manifest_sha256(_pair_files(base, indices), _dataset_root(base)))
        hp = getattr(datamodule, "hparams", None) or {}
        if out["subset"] and hp.get("max_test_samples") is not None:
            # How the subset was picked (data.subset): evenly spaced or the first, from the sorted list.
            out["subset_pick"] = {"max_test_samples": hp["max_test_samples"], "subset": hp.get("subset", "even")}
    train = getattr(datamodule, "train_set", None)
    if train is not None:
        base = _base_dataset(train)
        out["train_manifest_sha256"] = manifest_sha256(_pair_files(base, range(len(base))), _dataset_root(base))
        out["train_images"] = len(base)
    return out


# ----------------------------------------------------------------------------------------------------- weights
def weights_provenance(origin: str, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"origin": ..., "path": ..., "sha256": ...}`` (path and hash only when there is a file)."""
    out: dict[str, Any] = {"origin": origin}
    if path:
        p = Path(path)
        out["path"] = str(p.resolve())
        out["sha256"] = file_sha256(p) if p.is_file() else None
    return out


# ----------------------------------------------------------------------------------------------------- code
def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_provenance() -> dict[str, Any]:
    """Package version; git commit and dirty flag when the package runs from a git checkout of this project."""
    import clipdehaze

    pkg = Path(clipdehaze.__file__).resolve().parent
    out: dict[str, Any] = {"package": "clipdehaze", "version": clipdehaze.__version__, "git_commit": None,
                           "git_dirty": None}
    top = _git(["rev-parse", "--show-toplevel"], pkg)
    # Only this project's own checkout: an installed package inside some other repository reports no commit.
    if top and (Path(top) / "src" / "clipdehaze").resolve() == pkg:
        out["git_commit"] = _git(["rev-parse", "HEAD"], pkg)
        status = _git(["status", "--porcelain", "--untracked-files=no"], pkg)
        out["git_dirty"] = bool(status) if status is not None else None
    return out


# ----------------------------------------------------------------------------------------------------- software
def environment_provenance(device: torch.device | str | None = None) -> dict[str, Any]:
    device = torch.device(device) if device is not None else torch.device("cpu")
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "device_name": _cpu_name(),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        out["device_name"] = torch.cuda.get_device_name(device)
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def trainer_device(trainer: Any) -> torch.device | None:
    strategy = getattr(trainer, "strategy", None)
    return getattr(strategy, "root_device", None)
