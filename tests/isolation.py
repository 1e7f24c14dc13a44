"""Where the test suite keeps HOME and every cache, so that it reads and writes nothing outside its temporary
directories and the checkout's ignored ``.cache/`` folder (tests/test_hermetic.py checks it).

Per session (one temporary root; per test worker under it): HOME, the XDG folders and every tool cache the suite's
code reads (torch hub, Hugging Face, Triton, matplotlib, wandb, pip). Per session and shared by the workers:
``CLIPDEHAZE_CACHE`` (generated datasets and the compiled CPU scan kernel, whose writers are safe against
concurrent callers), fresh each run so a dataset left by an earlier run cannot mask a bug. Kept across runs in
``.cache/`` (ignored by git): inductor's compiled kernels (keyed by the code that made them) and the IQA reference
data, both only ever reused as they are.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PERSISTENT = REPO / ".cache"
_ROOT = "CLIPDEHAZE_TEST_ROOT"


def cache_environ(home: Path, cache: Path) -> dict[str, str]:
    """HOME and every cache variable the suite's tools read, all under ``home`` (``CLIPDEHAZE_CACHE``: ``cache``)."""
    xdg = home / ".cache"
    env = {
        "HOME": home, "XDG_CACHE_HOME": xdg, "XDG_CONFIG_HOME": home / ".config",
        "XDG_DATA_HOME": home / ".local" / "share", "XDG_STATE_HOME": home / ".local" / "state",
        "CLIPDEHAZE_CACHE": cache,
        "TORCH_HOME": xdg / "torch", "TORCH_EXTENSIONS_DIR": xdg / "torch_extensions",
        "TORCHINDUCTOR_CACHE_DIR": xdg / "torchinductor",
        "TRITON_HOME": home, "TRITON_CACHE_DIR": home / ".triton" / "cache",
        "HF_HOME": xdg / "huggingface", "HF_HUB_CACHE": xdg / "huggingface" / "hub",
        "HUGGINGFACE_HUB_CACHE": xdg / "huggingface" / "hub", "HF_DATASETS_CACHE": xdg / "huggingface" / "datasets",
        "MPLCONFIGDIR": home / ".config" / "matplotlib",
        "WANDB_DIR": home / "wandb", "WANDB_CACHE_DIR": xdg / "wandb", "WANDB_CONFIG_DIR": home / ".config" / "wandb",
        "WANDB_DATA_DIR": home / ".local" / "share" / "wandb", "WANDB_ARTIFACT_DIR": home / "wandb" / "artifacts",
        "PIP_CACHE_DIR": xdg / "pip",
    }
    home.mkdir(parents=True, exist_ok=True)
    return {k: str(v) for k, v in env.items()}


def isolate_session() -> Path:
    """Point this process's HOME and caches into the session's temporary root (call before torch is imported).

    A pytest process that is not an xdist worker makes the root; its workers inherit it through the environment and
    take ``<root>/<worker>``. Returns the root."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    root = os.environ.get(_ROOT) if worker else None
    if not root:
        root = tempfile.mkdtemp(prefix="clipdehaze-tests-")
        os.environ[_ROOT] = root
    os.environ.update(cache_environ(Path(root) / (worker or "main") / "home", Path(root) / "cache"))
    # Compiled kernels are keyed by the graph and the compiler: reusing them across runs changes no result.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(PERSISTENT / "torchinductor")
    return Path(root)


def end_session() -> None:
    """Remove the session's root (in the process that made it)."""
    if not os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get(_ROOT):
        shutil.rmtree(os.environ[_ROOT], ignore_errors=True)
