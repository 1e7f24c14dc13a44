"""What the hostile-input corpus (tests/test_untrusted_input.py, tests/test_hostile_round3.py) shares: the byte-level
snapshot that proves "nothing else changed", and the crafted checkpoints."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch


def snapshot(*roots: Path) -> dict[str, str]:
    """Every entry under ``roots`` (each root included, named by its path): a file as the sha256 of its bytes, a
    symlink as ``link -> <target>``, a folder as ``folder``. Two snapshots are equal exactly when no file was
    added, removed, moved or changed by a single byte."""
    out: dict[str, str] = {}
    for root in roots:
        for p in sorted([root, *root.rglob("*")] if root.exists() or root.is_symlink() else []):
            key = str(p)
            if p.is_symlink():
                out[key] = f"link -> {os.readlink(p)}"
            elif p.is_dir():
                out[key] = "folder"
            elif p.is_file():
                out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[key] = "special"
    return out


def crafted_checkpoint(path: Path, generator: str = "dehazeformer_test", base: dict[str, Any] | None = None,
                       run_config: dict[str, Any] | None = None, **hparam_changes: Any) -> Path:
    """A checkpoint as clipdehaze-train writes it (state_dict, plain hyper_parameters, the run config), built from
    ``generator`` with ``base`` constructor arguments, then with ``hparam_changes`` written over its
    hyper-parameters."""
    from clipdehaze.lit_module import RUN_CONFIG_KEY, DehazeLitModule

    torch.manual_seed(0)
    module = DehazeLitModule(generator={"name": generator}, **(base or {}))
    ckpt: dict[str, Any] = {"state_dict": module.state_dict(),
                            "hyper_parameters": {**dict(module.hparams), **hparam_changes}}
    if run_config is not None:
        ckpt[RUN_CONFIG_KEY] = run_config
    torch.save(ckpt, path)
    return path
