"""Image reading and writing: float RGB tensors in [0, 1] at the boundary, Pillow underneath.

Every way an image file can be broken (missing, empty, truncated, not an image) surfaces as one
exception type, :class:`ImageReadError`, whose message names the file, so a bad file deep inside a
110k-image training set is reported by name instead of as a collate error three frames later.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "is_image_file", "load_image", "save_image"]

# mkstemp creates 0600 files; written images should get the permissions a plain open() would give.
_UMASK = os.umask(0)
os.umask(_UMASK)

#: Suffixes (lower case) treated as images when scanning dataset folders.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


class ImageReadError(OSError, ValueError):
    """An image file that cannot be decoded; ``path`` and ``reason`` are kept as attributes.

    Subclasses both OSError (what Pillow and the filesystem raise) and ValueError (bad content), so
    existing ``except`` clauses for either keep working.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self):
        # DataLoader workers pickle exceptions back to the main process; keep both fields.
        return type(self), (self.path, self.reason)


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a visible file with an image suffix.

    Dot files are excluded because macOS AppleDouble companions (``._0001.png``) carry an image
    suffix but hold resource-fork bytes, and they are common in datasets zipped on a Mac.
    """
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _to_rgb_float(im: Image.Image) -> np.ndarray:
    """HWC float32 RGB in [0, 1] from any Pillow mode."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit greyscale PNG/TIFF opens as I;16* (and as I via some encoders, e.g. 16-bit PGM):
        # scale by the 16-bit range, not by 255.
        grey = np.asarray(im).astype(np.float32)
        return np.repeat((np.clip(grey, 0, 65535) / 65535.0)[..., None], 3, axis=2)
    if mode == "F":
        # Float images carry no range convention; [0, 1] is the only one this package knows.
        grey = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        # Composite on white: transparent pixels have undefined colour (often black), and white is
        # what viewers show. Fully opaque images (the usual case) come out bit-identical to RGB.
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:4]
        return rgba[..., :3] * alpha + (1.0 - alpha)
    if im.mode != "RGB":
        # L, 1, P, CMYK, YCbCr, LAB, HSV: Pillow's own converters.
        im = im.convert("RGB")
    # Pillow has no 16-bit RGB mode: it decodes 48-bit PNGs to RGB with their top 8 bits, so they
    # get the right scale here with 8-bit precision.
    return np.asarray(im, dtype=np.float32) / 255.0


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image as a (3, H, W) float32 tensor in [0, 1], upright per its EXIF orientation.

    Greyscale (8/16-bit, float), palette, CMYK and alpha images become RGB; alpha is composited
    on white. Raises :class:`ImageReadError` naming the file on any failure, including truncated
    files (the pixel data is decoded eagerly; ``ImageFile.LOAD_TRUNCATED_IMAGES`` is not used).
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise ImageReadError(path, "no such file" if not path.exists() else "not a regular file")
        if path.stat().st_size == 0:
            raise ImageReadError(path, "file is empty (0 bytes)")
        with Image.open(path) as im:
            # Image.open only parses the header; load() decodes and is where truncation shows up.
            im.load()
            im = ImageOps.exif_transpose(im)
            arr = _to_rgb_float(im)
    except ImageReadError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageReadError(path, f"{type(e).__name__}: {e}") from e
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def save_image(image: torch.Tensor | np.ndarray, path: str | os.PathLike, compress_level: int = 6) -> Path:
    """Write a float image in [0, 1] — (3, H, W), (1, H, W) or (H, W) — as an 8-bit PNG.

    Values are clamped and rounded. ``compress_level`` is zlib's 0-9 (6, Pillow's default, is ~4x
    slower than 1 for ~10% smaller files). The file appears atomically (temporary file in the same
    directory, then ``os.replace``), so a crash never leaves a truncated PNG under the final name.
    """
    path = Path(path)
    # numpy rather than torch for the conversion: these are small single-image ops, where torch's
    # intra-op thread pool only adds overhead (and stalls badly on a loaded machine).
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3):
        arr = arr.transpose(1, 2, 0)
    elif arr.ndim != 2:
        raise ValueError(f"save_image expects (3,H,W), (1,H,W) or (H,W); got shape {arr.shape} for {path}")
    arr = np.rint(np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(np.ascontiguousarray(arr)).save(f, format="PNG", compress_level=compress_level)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
