"""Safe checkpoint I/O: ``weights_only`` loading, integrity checks (zip CRC-32s, finite weights) with clear
errors, atomic writes."""

from __future__ import annotations

import io
import logging
import os
import pickle
import pickletools
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)

class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used, with the file named in the message."""


def verify_archive(path: Path) -> None:
    """Check the CRC-32 of every record of a ``torch.save`` zip archive.

    ``torch.load`` does not: a file whose tensor bytes were flipped (bad disk, interrupted copy) still loads and
    yields wrong or NaN outputs. Files in torch's legacy (non-zip) format carry no checksum and pass unchecked.
    """
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated file ({type(e).__name__}: {e})") from e
    if bad is not None:
        raise CheckpointError(f"{path}: corrupt file: record {bad!r} fails its CRC-32 check (its bytes changed after "
                              "it was written); use another copy")


def non_finite(state_dict: Mapping[str, Any]) -> list[str]:
    """The keys of the floating-point tensors of ``state_dict`` that hold NaN or Inf."""
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]


def check_finite(state_dict: Mapping[str, Any], path: str | os.PathLike, what: str = "",
                 fix: str = "use an earlier checkpoint") -> None:
    """Refuse weights holding NaN/Inf: they only produce black or NaN images downstream. ``what`` names the
    weights in the message (``"the EMA average (state_dict)"``), ``fix`` the way out."""
    if bad := non_finite(state_dict):
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad)} tensors)" if len(bad) > 5 else "")
        raise CheckpointError(f"{path}: non-finite weights (NaN/Inf) in {what + ': ' if what else ''}{shown}; the file "
                              f"is corrupt or was saved from a diverged run; {fix}")


def _pickled_calls(path: Path, limit: int = 64 << 20) -> list[str]:
    """The callables the pickles in ``path`` would import when loaded (a plain pickle, torch's legacy format of
    several pickles, or the ``.pkl`` records of a ``torch.save`` zip), other than those torch's ``weights_only``
    loader allows; read with :mod:`pickletools`, which runs nothing."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except Exception:  # noqa: BLE001 - a private torch helper: without it every global is listed
        allowed = set()
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                blobs = [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
        else:
            with open(path, "rb") as f:
                blobs = [f.read(limit)]
    except (OSError, zipfile.BadZipFile, ValueError):
        return []
    calls: list[str] = []
    for blob in blobs:
        stream, strings = io.BytesIO(blob), []
        try:
            while stream.tell() < len(blob):  # torch's legacy format: several pickles in a row
                for op, arg, _ in pickletools.genops(stream):
                    if op.name in ("GLOBAL", "INST"):
                        calls.append(".".join(str(arg).split(" ", 1)))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        calls.append(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str):
                        strings.append(arg)
        except Exception:  # noqa: BLE001 - a damaged pickle: report what was read up to there
            pass
    return [c for c in dict.fromkeys(calls) if c not in allowed]


def _payload_refused(path: Path) -> CheckpointError | None:
    """The error for a file ``weights_only`` refused because its pickle calls something, naming the file and the
    calls; None when it calls nothing (a damaged or non-pickle file)."""
    if not (calls := _pickled_calls(path)):
        return None
    return CheckpointError(f"{path}: refusing to unpickle this file: loading it would call {', '.join(calls[:5])}, "
                           "which is code, not weights; clipdehaze checkpoints and weights hold only tensors and plain "
                           "types: re-save the weights as a state_dict from a copy you trust")


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu", check_weights: bool = True
                         ) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` after :func:`verify_archive`; a missing, truncated, corrupt or
    non-tensor file (a pickle naming what it would call), or, with ``check_weights``, one with non-finite weights,
    is a CheckpointError naming it."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {p}")
    verify_archive(p)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise _payload_refused(p) or CheckpointError(
            f"{p}: refusing to unpickle arbitrary objects (weights_only=True failed: {str(e).splitlines()[0]}). "
            "clipdehaze checkpoints hold only tensors and plain types; re-save the weights as a state_dict") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{p}: corrupt or truncated checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{p}: not a training checkpoint (expected a dict with 'state_dict')")
    if not check_weights:
        return ckpt
    check_finite(ckpt["state_dict"], p)
    # The raw weights beside an EMA average (clipdehaze.callbacks.RAW_STATE_KEY): a resume steps them.
    if isinstance(ckpt.get("current_model_state"), Mapping):
        check_finite(ckpt["current_model_state"], p)
    return ckpt


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash never leaves a half file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_generator_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load published weights (e.g. an official ``dehazeformer-t.pth``) into a bare generator, ``strict=True``.

    Accepts a raw state_dict or the ``{"state_dict": ...}`` wrapper the upstream repos save; the ``module.``
    prefix that ``nn.DataParallel`` adds when upstream saved is a wrapper artefact, not part of the
    architecture, and is removed. A ``.safetensors`` file is read with safetensors.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weights file not found: {p}")
    if p.suffix != ".safetensors":
        verify_archive(p)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means the file is unusable; say which
        payload = _payload_refused(p) if isinstance(e, pickle.UnpicklingError) else None
        raise payload or CheckpointError(f"{p}: cannot read weights ({type(e).__name__}: {e})") from e
    if p.suffix == ".safetensors":
        from clipdehaze.provenance import file_sha256

        log.info("%s: sha256 %s (safetensors files carry no checksum: compare it with the one the weights were "
                 "published with)", p, file_sha256(p))
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) for k in sd):
        raise CheckpointError(f"{p}: not a state_dict (a mapping of parameter names to tensors) but a "
                              f"{type(sd).__name__}")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if any(k.startswith("generator.") for k in sd):
        sd = {k[len("generator."):]: v for k, v in sd.items() if k.startswith("generator.")}
    check_finite(sd, p)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        name = getattr(model, "generator_name", type(model).__name__)
        raise CheckpointError(f"{p}: weights do not match generator {name!r}: {e}") from e


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes temp-file-then-rename, so a kill mid-save never corrupts
    ``last.ckpt``: the previous file stays in place until the new one is complete."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        atomic_torch_save(checkpoint, path)
