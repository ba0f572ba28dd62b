"""Box conventions, named and converted in one place (pure numpy).

* ``xywh`` (COCO, ``Region.bbox_xywh``): the top-left pixel's column and row, and the box's width and height in
  pixels (what ``pycocotools.mask.toBbox`` gives).
* ``xyxy`` end-exclusive (``Region.bbox_xyxy``): ``x1 = x + w``, one past the last column -- Python slicing
  (``mask[y0:y1, x0:x1]``) and COCO's convention.
* ``xyxy`` inclusive: ``x1 = x + w - 1``, the last column itself -- what SAM computes from masks
  (``batched_mask_to_box``) and takes as a box prompt, and what ``supervision.mask_to_xyxy`` gives for
  ``Detections.xyxy``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["xywh_to_xyxy", "xywh_to_xyxy_inclusive"]


def xywh_to_xyxy(xywh: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(..., 4)`` end-exclusive ``x0, y0, x1, y1`` of COCO ``x, y, w, h`` boxes."""
    b = np.asarray(xywh, dtype=np.float64)
    return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:]], axis=-1)


def xywh_to_xyxy_inclusive(xywh: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(..., 4)`` inclusive ``x0, y0, x1, y1`` (SAM's and supervision's) of COCO ``x, y, w, h`` boxes; an empty
    box (``w == 0``) is all zeros, as SAM gives it."""
    b = np.asarray(xywh, dtype=np.float64)
    out = np.concatenate([b[..., :2], b[..., :2] + b[..., 2:] - 1], axis=-1)
    out[b[..., 2] == 0] = 0
    return out
