"""Where the configs live (checkout or installed wheel), resolvers, and run-directory naming."""

from __future__ import annotations

import os
import secrets
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

_CHECKOUT_CONF = Path(__file__).resolve().parents[3] / "conf"


def config_path() -> str:
    """The checkout's ``conf/`` when running from a source tree, else the configs shipped in the wheel."""
    if (_CHECKOUT_CONF / "train.yaml").is_file():
        return str(_CHECKOUT_CONF)
    return "pkg://clipdehaze.conf"


def run_stamp() -> str:
    """Sub-second timestamp + job id (SLURM / torchrun) or a random suffix: two jobs never share a run dir."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
    return f"{stamp}_{job}" if job and job != "none" else f"{stamp}_{secrets.token_hex(2)}"


def _clip_dim(model_name: str) -> int:
    """Embedding width of an open_clip architecture (text features follow the chosen CLIP)."""
    import open_clip

    from clipdehaze.models.clip.frozen import register_builtin_configs

    register_builtin_configs()
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(f"unknown open_clip architecture {model_name!r}; known: {', '.join(open_clip.list_models())}")
    return int(cfg["embed_dim"])


def register_resolvers() -> None:
    for name, fn in (("run_stamp", run_stamp), ("clip_dim", _clip_dim)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=True)
