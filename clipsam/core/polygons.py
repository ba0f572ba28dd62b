"""Mask outlines as polygons: the rings of a mask (outer boundaries and holes) by marching squares, and the one
polygon per mask that YOLO-seg wants. Coordinates are pixel edges (a mask covering pixel column 0 starts at
``x = 0``), as in COCO polygons. numpy + scikit-image.
"""

from __future__ import annotations

import numpy as np

from . import masks as M

__all__ = ["mask_polygon", "mask_rings"]


def _signed_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def mask_rings(rle: M.RLE, tolerance: float = 1.0) -> list[tuple[np.ndarray, bool]]:
    """Every ring of a mask as ``(xy (K, 2) float, is_hole)``, simplified within *tolerance* pixels (kept
    unsimplified where simplifying would flatten it: 1-pixel masks and strips); outer rings first, largest
    first. Drawn with the even-odd rule they give the mask back, holes included."""
    from skimage import measure

    if M.area(rle) == 0:
        return []
    x, y, w, h = (int(v) for v in M.bbox_xywh(rle))
    crop = np.pad(M.decode(rle)[y: y + h, x: x + w], 1).astype(np.uint8)
    rings = []
    for c in measure.find_contours(crop, 0.5, positive_orientation="high"):
        xy = np.stack([c[:, 1], c[:, 0]], axis=1)
        area = _signed_area(xy)  # outer boundaries wind one way (negative here), holes the other
        if tolerance > 0:
            simple = measure.approximate_polygon(xy, tolerance)
            xy = simple if len(simple) >= 4 and abs(_signed_area(simple)) >= 0.75 * abs(area) else xy
        if len(xy) > 1 and np.allclose(xy[0], xy[-1]):
            xy = xy[:-1]
        # contour coordinates are pixel centres of the padded crop; +0.5 turns them into pixel-edge coordinates
        rings.append((area >= 0, abs(area), xy + np.array([x - 1 + 0.5, y - 1 + 0.5])))
    rings.sort(key=lambda t: (t[0], -t[1]))
    return [(xy, hole) for hole, _, xy in rings]


def _bridge(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """*a* and *b* as one closed path: along *a* to its point nearest *b*, around *b*, and back."""
    d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    return np.concatenate([a[: i + 1], b[j:], b[: j + 1], a[i:]])


def mask_polygon(rle: M.RLE, tolerance: float = 1.0) -> np.ndarray:
    """The outer boundary of a mask as one ``(K, 2)`` float array of ``x, y`` image coordinates; empty
    ``(0, 2)`` for an empty mask. Pieces are joined by zero-width bridges, largest first; holes are dropped."""
    outers = [xy for xy, hole in mask_rings(rle, tolerance) if not hole]
    if not outers:
        return np.zeros((0, 2), dtype=np.float64)
    poly = outers[0]
    for other in outers[1:]:
        poly = _bridge(poly, other)
    return poly
