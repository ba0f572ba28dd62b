"""Propose and nest stages: a :class:`~clipsam.models.base.MaskProposer`'s candidates -> near-duplicates merged,
canonical order, containment parents, as one :class:`~clipsam.regions.Regions` at processing size."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core import masks as M
from ..core import tree as T
from ..core.regions import Regions
from ..models.base import MaskProposer, Proposal

log = logging.getLogger(__name__)

__all__ = ["nest", "propose"]


def propose(proposer: MaskProposer, pixels: np.ndarray, embedding: Any, params: dict[str, Any]) -> list[Proposal]:
    """Every automatic candidate mask of *pixels* (SAM's generator; *params* pass through)."""
    return proposer.generate(pixels, embedding, **params)


def nest(rles: Sequence[M.RLE], predicted_iou: Sequence[float], stability: Sequence[float], *,
         duplicate_iou: float = T.DEFAULT_DUPLICATE_IOU, containment: float = T.DEFAULT_CONTAINMENT) -> Regions:
    """Merge near-duplicates (the better of two by predicted IoU x stability stays), put the rest in canonical
    order (larger first: stable ids) and link each to the smallest region holding *containment* of it.

    The returned ``ids`` are the input positions the regions came from."""
    piou = np.asarray(predicted_iou, dtype=np.float64)
    stab = np.asarray(stability, dtype=np.float64)
    # each mask against the masks already kept, not every other; the kept ones' intersections feed the tree
    keep, inter = T.dedupe_kept(rles, piou * stab, duplicate_iou)
    kept = [rles[i] for i in keep]
    order = T.canonical_order(kept)
    rows = keep[order]
    ordered = [rles[i] for i in rows]
    log.info("%d proposals -> %d regions after merging duplicates", len(rles), len(ordered))
    return Regions.from_rles(ordered, predicted_iou=piou[rows], stability_score=stab[rows],
                             parent=T.build_parents(ordered, containment, inter=inter[np.ix_(order, order)]),
                             ids=rows)


def nest_proposals(proposals: Sequence[Proposal], **kwargs: Any) -> Regions:
    """:func:`nest` for :class:`~clipsam.models.base.Proposal` objects."""
    return nest([p.rle for p in proposals], [p.predicted_iou for p in proposals],
                [p.stability_score for p in proposals], **kwargs)
