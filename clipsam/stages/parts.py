"""Parts and refine stages: more SAM prompts on the cached image embedding.

Coarse-to-fine parts prompt SAM at points inside each labelled object and keep the masks that lie inside it;
refinement re-predicts a mask from its own box.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import masks as M
from ..models.base import MaskProposer
from ..regions import Regions

log = logging.getLogger(__name__)

__all__ = ["part_candidates", "points_inside", "refine_masks"]


def points_inside(mask: np.ndarray, n: int) -> list[tuple[float, float]]:
    """Up to *n* points (x, y) spread over *mask*: a grid over its box, keeping points that fall inside."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0 or n <= 0:
        return []
    side = max(1, int(np.ceil(np.sqrt(n))))
    pts: list[tuple[float, float]] = []
    for _ in range(4):  # densify until enough points land inside a thin or hollow mask
        gx = np.linspace(xs.min(), xs.max(), side + 2)[1:-1]
        gy = np.linspace(ys.min(), ys.max(), side + 2)[1:-1]
        pts = [(float(x) + 0.5, float(y) + 0.5) for y in gy for x in gx if mask[int(y), int(x)]]
        if len(pts) >= n:
            break
        side *= 2
    if len(pts) > n:
        pts = [pts[int(k)] for k in np.linspace(0, len(pts) - 1, n)]
    return pts


def part_candidates(proposer: MaskProposer, embedding: Any, regions: Regions, objects: Sequence[int],
                    points_per_object: int, *, containment: float, max_part_share: float,
                    min_pred_iou: float) -> tuple[list[M.RLE], list[float]]:
    """Masks SAM gives for clicks inside each of the *objects* rows that lie inside that object (at least
    *containment* of them), are clearly smaller (at most *max_part_share* of it) and reach *min_pred_iou*."""
    new_rles: list[M.RLE] = []
    new_iou: list[float] = []
    for i in objects:
        mask = M.decode(regions.rles[i])
        area = int(mask.sum())
        for x, y in points_inside(mask, points_per_object):
            out = proposer.predict(embedding, point_coords=np.asarray([[x, y]], dtype=np.float64),
                                   point_labels=np.asarray([1]), multimask_output=True)
            for m, q in zip(out.masks, out.iou_predictions, strict=True):
                size = int(m.sum())
                if 0 < size <= max_part_share * area and int((m & mask).sum()) >= containment * size \
                        and q >= min_pred_iou:
                    new_rles.append(M.encode(m))  # type: ignore[arg-type]
                    new_iou.append(float(q))
    log.info("coarse-to-fine: %d part masks prompted inside %d objects", len(new_rles), len(objects))
    return new_rles, new_iou


def refine_masks(proposer: MaskProposer, embedding: Any, rles: Sequence[M.RLE], rows: Sequence[int],
                 predicted_iou: np.ndarray) -> tuple[list[M.RLE], np.ndarray]:
    """*rles* with the masks at *rows* re-predicted by SAM from their own boxes (kept when SAM returns nothing)."""
    out_rles, out_iou = list(rles), np.array(predicted_iou, dtype=np.float64)
    for i in rows:
        x, y, w, h = M.bbox_xywh(out_rles[i])
        out = proposer.predict(embedding, box=np.asarray([x, y, x + w, y + h], dtype=np.float64),
                               multimask_output=False)
        if out.masks[0].any():
            out_rles[i] = M.encode(out.masks[0])  # type: ignore[assignment]
            out_iou[i] = float(out.iou_predictions[0])
    return out_rles, out_iou
