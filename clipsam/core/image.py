"""Images in: paths, PIL images and numpy arrays become ``(H, W, 3) uint8`` RGB.

Pure numpy + Pillow; no torch. Every failure raises :class:`~clipsam.errors.ImageError` naming the file
(or the array) and the reason.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ClipsamError, ImageError
from ..files import MAX_IMAGE_BYTES, check_regular

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]  # noqa: UP007 (a runtime alias on 3.10)

#: Largest image clipsam decodes by default (pixels). Larger files are refused before decoding, which
#: also stops decompression bombs. Override per call or with ``CLIPSAM_MAX_PIXELS``.
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own bomb limit x2: ~179 MP, e.g. 16384 x 10922

#: Colour that transparent pixels are composited onto.
DEFAULT_BACKGROUND = (255, 255, 255)

#: Image-like file types Pillow cannot decode: a folder holding one gets an error row for it, not a silent skip.
UNSUPPORTED_SUFFIXES: dict[str, str] = {
    ".svg": "SVG is a vector format", ".svgz": "SVG is a vector format", ".heic": "HEIC needs a HEIF decoder",
    ".heif": "HEIF needs a HEIF decoder", ".avif": "AVIF needs an AVIF decoder", ".jxl": "JPEG XL is not supported",
    ".psd": "Photoshop files are not supported", ".raw": "camera RAW files are not supported",
    ".cr2": "camera RAW files are not supported", ".nef": "camera RAW files are not supported",
    ".arw": "camera RAW files are not supported", ".dng": "camera RAW files are not supported",
    ".eps": "EPS is a vector format", ".pdf": "PDF is a document format",
}

__all__ = ["DEFAULT_MAX_PIXELS", "UNSUPPORTED_SUFFIXES", "ImageInput", "fit_long_side", "load_image", "printable",
           "source_name"]


#: Pillow's own ``Image.open``, kept as clipsam found it: Ultralytics replaces ``PIL.Image.open`` process-wide with a
#: wrapper that, on a file Pillow cannot identify, installs and imports ``pi-heif``, so a broken file would be
#: reported as a missing module (and trigger a pip install). When clipsam is imported after Ultralytics, the
#: wrapper's ImportError is reported as the unreadable image it is.
_PIL_OPEN = Image.open

def printable(text: str) -> str:
    """*text* with the undecodable bytes of a file name (Python keeps them as lone surrogates) shown as U+FFFD,
    so that it can be printed, logged or stored as UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def source_name(image: object) -> str:
    """A short human name for an image input, used in messages."""
    if isinstance(image, (str, os.PathLike)):
        return printable(str(image))
    if isinstance(image, Image.Image):
        return getattr(image, "filename", "") or f"PIL image ({image.mode}, {image.width}x{image.height})"
    if isinstance(image, np.ndarray):
        return f"array {image.shape} {image.dtype}"
    return type(image).__name__


def _max_pixels(max_pixels: int | None) -> int:
    if max_pixels is not None:
        return int(max_pixels)
    env = os.environ.get("CLIPSAM_MAX_PIXELS")
    return int(env) if env else DEFAULT_MAX_PIXELS


def load_image(
    image: ImageInput,
    *,
    max_pixels: int | None = None,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
) -> np.ndarray:
    """Read *image* as an ``(H, W, 3) uint8`` RGB array.

    Accepts a file path, a ``PIL.Image`` or a numpy array of shape ``(H, W)``, ``(H, W, 1)``,
    ``(H, W, 3)`` or ``(H, W, 4)`` with dtype ``uint8``, ``uint16`` (scaled by 255/65535), ``bool`` or float
    (values in ``[0, 1]``). EXIF orientation is applied; grayscale, palette, CMYK and 16-bit images are
    converted to RGB; alpha is composited onto *background*. Images over *max_pixels* are refused before
    they are decoded.

    Raises:
        ImageError: the file is missing, unreadable, truncated, not an image, too large, or the array has
            an unsupported shape, dtype or value range.
    """
    name = source_name(image)
    limit = _max_pixels(max_pixels)
    if isinstance(image, np.ndarray):
        return _from_array(image, name, limit, background)
    if isinstance(image, Image.Image):
        return _from_pil(image, name, limit, background)
    if isinstance(image, (str, os.PathLike)):
        return _from_path(Path(image), limit, background)
    raise ImageError(f"{name}: expected a file path, a PIL.Image or a numpy array, got {type(image).__name__}")


def _from_path(path: Path, limit: int, background: tuple[int, int, int]) -> np.ndarray:
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image file")
    try:  # a FIFO or a device would block or never end
        check_regular(path, "image file", MAX_IMAGE_BYTES)
    except ClipsamError as exc:
        raise ImageError(str(exc)) from None
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: file is empty (0 bytes)")
    if path.suffix.lower() in UNSUPPORTED_SUFFIXES:
        raise ImageError(f"{path}: unsupported image type ({UNSUPPORTED_SUFFIXES[path.suffix.lower()]}); "
                         "convert it to PNG or JPEG first")
    try:
        with warnings.catch_warnings():
            # clipsam applies its own pixel limit below, before any pixel is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _PIL_OPEN(path) as pil:
                _check_pixels(pil.width, pil.height, str(path), limit)
                pil.load()
                return _from_pil(pil, str(path), limit, background)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: refused as a decompression bomb ({exc})") from exc
    except (UnidentifiedImageError, ImportError) as exc:  # ImportError: a third-party opener patched in (below)
        raise ImageError(f"{path}: not an image Pillow can read (unknown or corrupt format)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: could not be decoded ({exc})") from exc


def _check_pixels(width: int, height: int, name: str, limit: int) -> None:
    if width * height > limit:
        raise ImageError(
            f"{name}: {width}x{height} = {width * height / 1e6:.0f} MP exceeds the {limit / 1e6:.0f} MP limit "
            "(possible decompression bomb); raise max_pixels or CLIPSAM_MAX_PIXELS if the image is genuine"
        )
    if width == 0 or height == 0:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")


def _from_pil(pil: Image.Image, name: str, limit: int, background: tuple[int, int, int]) -> np.ndarray:
    _check_pixels(pil.width, pil.height, name, limit)
    with contextlib.suppress(Exception):  # a broken EXIF block must not lose the image
        pil = ImageOps.exif_transpose(pil)
    mode = pil.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return _from_array(np.asarray(pil), name, limit, background, sixteen_bit=True)
    if mode == "F":
        return _from_array(np.asarray(pil, dtype=np.float32), name, limit, background)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in pil.info):
        rgba = pil.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        canvas.alpha_composite(rgba)
        return np.asarray(canvas.convert("RGB"), dtype=np.uint8).copy()
    return np.asarray(pil.convert("RGB"), dtype=np.uint8).copy()


def _from_array(
    arr: np.ndarray,
    name: str,
    limit: int,
    background: tuple[int, int, int],
    sixteen_bit: bool = False,
) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"{name}: expected shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    _check_pixels(arr.shape[1], arr.shape[0], name, limit)
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == bool:
        out = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16 or (sixteen_bit and np.issubdtype(arr.dtype, np.integer)):
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageError(f"{name}: 16-bit image has values outside 0..65535")
        out = np.rint(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if arr.size and not np.isfinite(arr).all():
            raise ImageError(f"{name}: float image contains NaN or infinity")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < 0.0 or hi > 1.0:
            raise ImageError(
                f"{name}: float images must hold values in [0, 1], got [{lo:g}, {hi:g}] "
                "(divide 0..255 data by 255, or pass it as uint8)"
            )
        out = np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise ImageError(f"{name}: unsupported dtype {arr.dtype}; use uint8, uint16, bool or float in [0, 1]")
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    elif out.shape[2] == 4:
        alpha = out[:, :, 3:4].astype(np.float64) / 255.0
        bg = np.asarray(background, dtype=np.float64)[None, None, :]
        out = np.rint(out[:, :, :3].astype(np.float64) * alpha + bg * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(out)


def fit_long_side(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale ``(H, W, 3) uint8`` *image* so that its long side is at most *max_side* (never upscales).

    Returns the image itself when it already fits or *max_side* is ``None``.
    """
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(resized, dtype=np.uint8)
