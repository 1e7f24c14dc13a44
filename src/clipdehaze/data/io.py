"""Image reading and writing: float RGB tensors in [0, 1] at the boundary, Pillow underneath.

Every way an image file can be broken (missing, empty, truncated, not an image) surfaces as one
exception type, :class:`ImageReadError`, whose message names the file, so a bad file deep inside a
110k-image training set is reported by name instead of as a collate error three frames later.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin

from clipdehaze.utils.files import atomic_write

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "Skipped", "encode_png", "exif_orientation", "load_image",
           "png_text", "save_image", "scan_images"]

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


#: Image formats met in datasets that are not read (palette-only, HDR, camera raw, vector ...): skipped with a reason.
_UNSUPPORTED = frozenset({".gif", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".exr", ".hdr", ".pfm", ".svg",
                          ".ico", ".psd", ".dng", ".cr2", ".nef", ".arw", ".raw"})


@dataclass(frozen=True)
class Skipped:
    """A folder entry that a listing left out, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path.name} ({self.reason})"


def _skip_reason(p: Path) -> str | None:
    suffix = p.suffix.lower()
    # macOS AppleDouble companions (``._0001.png``) carry an image suffix but hold resource-fork bytes; they are
    # common in datasets zipped on a Mac.
    if p.name.startswith("._"):
        return "macOS resource-fork companion ('._' file), not an image"
    if p.name.startswith("."):
        return "hidden file"
    if p.is_symlink() and not p.exists():
        return f"broken symlink: its target {os.readlink(p)} does not exist"
    if p.is_dir():
        return "a folder named like an image" if suffix in IMAGE_EXTENSIONS else "a folder"
    if not p.is_file():
        return "not a regular file"
    if suffix in _UNSUPPORTED:
        return f"unsupported format {suffix}; convert it to PNG"
    if suffix not in IMAGE_EXTENSIONS:
        return f"not an image ({suffix or 'no extension'})"
    return None


def scan_images(folder: str | os.PathLike) -> tuple[list[Path], list[Skipped]]:
    """The image files directly inside ``folder`` sorted by name, and every other entry with the reason it is
    skipped (hidden and ``._`` files, broken symlinks, folders, unsupported formats, non-images)."""
    images, skipped = [], []
    for p in sorted(Path(folder).iterdir()):
        reason = _skip_reason(p)
        if reason is None:
            images.append(p)
        else:
            skipped.append(Skipped(p, reason))
    return images, skipped


def exif_orientation(path: str | os.PathLike) -> int:
    """The EXIF orientation tag (1-8) from the header alone; 1 (upright) when absent or unreadable."""
    try:
        with Image.open(path) as im:
            value = im.getexif().get(0x0112, 1)
    except (OSError, SyntaxError, ValueError):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _to_rgb_float(im: Image.Image, path: Path) -> np.ndarray:
    """HWC float32 RGB in [0, 1] from any Pillow mode."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit greyscale PNG/TIFF opens as I;16* (and as I via some encoders, e.g. 16-bit PGM):
        # scale by the 16-bit range, not by 255.
        grey = np.asarray(im).astype(np.float32)
        return np.repeat((np.clip(grey, 0, 65535) / 65535.0)[..., None], 3, axis=2)
    if mode == "F":
        # Float images carry no range convention; [0, 1] is the only one this package knows, and values outside
        # it, +-Inf included, are clipped to it. NaN has no intensity to clip to, and one NaN pixel turns a
        # convolutional network's whole output NaN (a black image), so it is refused.
        grey = np.asarray(im, dtype=np.float32)
        nan = np.isnan(grey)
        if nan.any():
            row, col = (int(i[0]) for i in np.nonzero(nan))
            raise ImageReadError(path, f"{int(nan.sum())} NaN pixel(s) (the first at row {row}, column {col}); "
                                       "fill them (e.g. by interpolation) and save the image again")
        return np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=2)
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
    on white; float values are clipped to [0, 1] and NaN pixels refused; animated and multi-page images (GIF, APNG,
    WebP, TIFF; not a JPEG's MPO previews) are refused rather than reduced to their first frame. Raises
    :class:`ImageReadError`
    naming the file on any failure, including truncated files (the pixel data is decoded eagerly;
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is not used).
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise ImageReadError(path, "no such file" if not path.exists() else "not a regular file")
        if path.stat().st_size == 0:
            raise ImageReadError(path, "file is empty (0 bytes)")
        with Image.open(path) as im:
            # A JPEG's extra MPO pictures (a phone's preview or depth map) are not the photo; other formats' extra
            # frames (GIF/APNG/WebP animations, multi-page TIFFs) are, and reading only the first loses the rest.
            if (frames := getattr(im, "n_frames", 1)) > 1 and im.format != "MPO":
                raise ImageReadError(path, f"an animated or multi-page {im.format} of {frames} frames, and only single "
                                           "images are read; save each frame as its own image (e.g. ffmpeg -i "
                                           f"{path.name} frame_%04d.png) and pass their folder")
            # Image.open only parses the header; load() decodes and is where truncation shows up.
            im.load()
            im = ImageOps.exif_transpose(im)
            arr = _to_rgb_float(im, path)
    except ImageReadError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageReadError(path, f"{type(e).__name__}: {e}") from e
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def encode_png(image: torch.Tensor | np.ndarray, compress_level: int = 6, text: dict[str, str] | None = None) -> bytes:
    """A float image in [0, 1] — (3, H, W), (1, H, W) or (H, W) — as 8-bit PNG bytes; ``text`` becomes tEXt chunks.

    Values are clamped and rounded, NaN written as 0. ``compress_level`` is zlib's 0-9 (6, Pillow's default, is ~4x slower than 1
    for ~10% smaller files).
    """
    # numpy rather than torch for the conversion: these are small single-image ops, where torch's
    # intra-op thread pool only adds overhead (and stalls badly on a loaded machine).
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3):
        arr = arr.transpose(1, 2, 0)
    elif arr.ndim != 2:
        raise ValueError(f"expected an image of shape (3,H,W), (1,H,W) or (H,W); got {arr.shape}")
    arr = np.rint(np.clip(np.nan_to_num(arr.astype(np.float32), nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=compress_level, pnginfo=info)
    return buf.getvalue()


def save_image(image: torch.Tensor | np.ndarray, path: str | os.PathLike, compress_level: int = 6,
               text: dict[str, str] | None = None) -> Path:
    """Write a float image in [0, 1] as an 8-bit PNG (see :func:`encode_png`).

    The file appears atomically (temporary file in the same directory, then ``os.replace``), so a crash never
    leaves a truncated PNG under the final name; a failed write names the path.
    """
    try:
        data = encode_png(image, compress_level, text)
    except ValueError as e:
        raise ValueError(f"{e} for {path}") from e
    return atomic_write(path, data, durable=False)


def png_text(path: str | os.PathLike) -> dict[str, str]:
    """The tEXt/iTXt chunks before the pixel data of a PNG (empty for anything else or an unreadable file)."""
    try:
        with Image.open(path) as im:
            return {k: v for k, v in im.info.items() if isinstance(v, str)} if im.format == "PNG" else {}
    except (OSError, SyntaxError, ValueError):
        return {}
