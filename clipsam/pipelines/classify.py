"""Label masks that came from elsewhere (a click, a box, an annotator's brush) with CLIP, among given labels.

The masks are embedded as every region is (:meth:`PointPipeline.embed`) and their labels decided by the query rules
(:func:`~clipsam.stages.label.match_query`): the labels compete with the negatives and clipsam's vocabulary, so a
mask that is none of them stays unlabelled instead of taking the nearest label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core import masks as M
from ..stages.label import match_query, parse_query
from .points import PointPipeline

__all__ = ["classify_masks"]


def classify_masks(seg: Any, image: Any, rles: Sequence[M.RLE], labels: str | Sequence[str]
                   ) -> list[tuple[str | None, float]]:
    """``(label | None, score)`` per mask (COCO RLE at the image's original size), among *labels* as free text.

    Args:
        seg: a :class:`~clipsam.Segmenter`.
        image: the image the masks are of (anything :func:`~clipsam.image.load_image` reads).
        rles: the masks.
        labels: the labels to choose among (``"cat, dog"`` or a list).
    """
    terms = parse_query(labels)
    if not len(rles):
        return []
    pipe = PointPipeline(seg)
    work = seg.prepare(image)
    small = [M.resize(r, work.shape) for r in rles]
    feats = pipe.embed(work, small)
    matched = match_query(feats, np.full(len(small), -1), [], terms, seg.text_bank, pipe.policy,
                          rles=small, embed=lambda r: pipe.embed(work, r))
    out: list[tuple[str | None, float]] = []
    for i in range(len(small)):
        d = matched.get(i, (None, None))[0]
        out.append((d.node.name, min(1.0, float(d.score))) if d is not None and d.node is not None else (None, 0.0))
    return out
