"""Cut one square crop per mask for CLIP. Pure numpy + Pillow; no torch."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

#: How pixels outside the mask are neutralised: ``grey`` (CLIP's mean colour), ``blur`` or ``none``.
FILL_MODES = ("grey", "blur", "none")
#: CLIP's training-set mean colour: outside pixels painted with it carry no signal after normalisation.
CLIP_MEAN_RGB = (122, 116, 104)

__all__ = ["CLIP_MEAN_RGB", "FILL_MODES", "crop_region"]


def crop_region(
    image: np.ndarray,
    mask: np.ndarray,
    bbox_xywh: tuple[float, float, float, float],
    *,
    size: int,
    margin: float = 0.1,
    fill: str = "grey",
) -> np.ndarray:
    """One ``(size, size, 3) uint8`` crop of *mask*'s region in *image*, padded square.

    Args:
        image: ``(H, W, 3) uint8``.
        mask: ``(H, W) bool``, the region.
        bbox_xywh: the mask's tight box, pixels.
        size: side of the returned crop (the embedder's input size).
        margin: context kept around the box, as a share of the box's longer side on each side.
        fill: what replaces pixels outside the mask: ``grey``, ``blur`` or ``none`` (keep them).
    """
    if fill not in FILL_MODES:
        raise ValueError(f"fill must be one of {FILL_MODES}, got {fill!r}")
    h, w = mask.shape
    x, y, bw, bh = bbox_xywh
    pad = margin * max(bw, bh)
    x0, y0 = max(0, int(np.floor(x - pad))), max(0, int(np.floor(y - pad)))
    x1, y1 = min(w, int(np.ceil(x + bw + pad))), min(h, int(np.ceil(y + bh + pad)))
    if x1 <= x0 or y1 <= y0:  # empty mask: a grey square
        return np.full((size, size, 3), CLIP_MEAN_RGB, dtype=np.uint8)
    patch = image[y0:y1, x0:x1]
    inside = mask[y0:y1, x0:x1]
    if fill == "grey":
        patch = np.where(inside[:, :, None], patch, np.asarray(CLIP_MEAN_RGB, dtype=np.uint8))
    elif fill == "blur":
        radius = max(2.0, 0.05 * max(patch.shape[:2]))
        blurred = np.asarray(Image.fromarray(patch).filter(ImageFilter.GaussianBlur(radius)))
        patch = np.where(inside[:, :, None], patch, blurred)
    ph, pw = patch.shape[:2]
    side = max(ph, pw)
    square = np.empty((side, side, 3), dtype=np.uint8)
    square[:] = CLIP_MEAN_RGB
    oy, ox = (side - ph) // 2, (side - pw) // 2
    square[oy:oy + ph, ox:ox + pw] = patch
    if side == size:
        return square
    resample = Image.Resampling.BICUBIC if side < size else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(square).resize((size, size), resample, reducing_gap=None if side < size else 2.0))
