"""Parts and refine stages: more SAM prompts on the cached image embedding.

Coarse-to-fine parts prompt SAM at points inside each labelled object and keep the masks that lie inside it;
refinement re-predicts a mask from its own box.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..core import masks as M
from ..core.boxes import xywh_to_xyxy_inclusive
from ..core.regions import Regions
from ..models.base import MaskProposer
from .nest import nest

log = logging.getLogger(__name__)

__all__ = ["add_parts", "inside_and_smaller", "merge_candidates", "part_candidates", "points_inside", "refine_masks"]


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
        for x, y in points_inside(mask, points_per_object):
            out = proposer.predict(embedding, point_coords=np.asarray([[x, y]], dtype=np.float64),
                                   point_labels=np.asarray([1]), multimask_output=True)
            for m, q in zip(out.masks, out.iou_predictions, strict=True):
                if q >= min_pred_iou and inside_and_smaller(m, mask, containment=containment,
                                                            max_part_share=max_part_share):
                    new_rles.append(M.encode(m))  # type: ignore[arg-type]
                    new_iou.append(float(q))
    log.info("coarse-to-fine: %d part masks prompted inside %d objects", len(new_rles), len(objects))
    return new_rles, new_iou


def refine_masks(proposer: MaskProposer, embedding: Any, regions: Regions, rows: Sequence[int], feats: np.ndarray,
                 embed: Callable[[list[M.RLE]], np.ndarray]) -> tuple[Regions, np.ndarray]:
    """*regions* with the masks at *rows* re-predicted by SAM from their own boxes (kept when SAM returns nothing),
    and *feats* with those rows re-embedded."""
    rles, piou = list(regions.rles), regions.predicted_iou.copy()
    for i in rows:
        box = xywh_to_xyxy_inclusive(M.bbox_xywh(rles[i]))  # SAM's own convention for a mask's box
        out = proposer.predict(embedding, box=box, multimask_output=False)
        if out.masks[0].any():
            rles[i] = M.encode(out.masks[0])  # type: ignore[assignment]
            piou[i] = float(out.iou_predictions[0])
    feats = feats.copy()
    feats[list(rows)] = embed([rles[i] for i in rows])
    return Regions.from_rles(rles, predicted_iou=piou, stability_score=regions.stability_score,
                             parent=regions.parent, ids=regions.ids), feats


def add_parts(proposer: MaskProposer, embedding: Any, regions: Regions, feats: np.ndarray, objects: Sequence[int],
              points_per_object: int, *, embed: Callable[[list[M.RLE]], np.ndarray], containment: float,
              duplicate_iou: float, max_part_share: float, min_pred_iou: float) -> tuple[Regions, np.ndarray]:
    """Coarse-to-fine: :func:`part_candidates` inside the *objects* rows, merged with *regions* and nested again
    (:func:`merge_candidates`). Returns *regions* itself when nothing new was found."""
    new_rles, new_iou = part_candidates(proposer, embedding, regions, objects, points_per_object,
                                        containment=containment, max_part_share=max_part_share,
                                        min_pred_iou=min_pred_iou)
    return merge_candidates(regions, feats, new_rles, new_iou, embed=embed, containment=containment,
                            duplicate_iou=duplicate_iou)


def merge_candidates(regions: Regions, feats: np.ndarray, new_rles: Sequence[M.RLE], new_iou: Sequence[float], *,
                     embed: Callable[[list[M.RLE]], np.ndarray], containment: float, duplicate_iou: float
                     ) -> tuple[Regions, np.ndarray]:
    """*regions* and *new_rles* nested together; only the new masks that survive merging are embedded (with
    *embed*). Returns *regions* itself when there is nothing new."""
    if not len(new_rles):
        return regions, feats
    new_rles = list(new_rles)
    old = len(regions)
    merged = nest(list(regions.rles) + new_rles, np.concatenate([regions.predicted_iou, np.asarray(new_iou)]),
                  np.concatenate([regions.stability_score, np.ones(len(new_rles))]),  # prompted: no stability score
                  duplicate_iou=duplicate_iou, containment=containment)
    source = [int(k) for k in merged.ids]  # positions in old regions + new masks
    added = [k for k in source if k >= old]
    if not added:
        return merged, np.stack([feats[k] for k in source]).astype(np.float32)
    extra = embed([new_rles[k - old] for k in added])
    row = {k: j for j, k in enumerate(added)}
    log.info("parts: %d new regions", len(added))
    return merged, np.stack([feats[k] if k < old else extra[row[k]] for k in source]).astype(np.float32)


def inside_and_smaller(mask: np.ndarray, whole: np.ndarray, *, containment: float, max_part_share: float) -> bool:
    """Whether *mask* lies inside *whole* (at least *containment* of it) and is clearly smaller than it."""
    size = int(mask.sum())
    return 0 < size <= max_part_share * int(whole.sum()) and int((mask & whole).sum()) >= containment * size
