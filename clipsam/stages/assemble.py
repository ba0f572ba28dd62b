"""Assemble stage: regions at processing size with their labels -> a full-resolution
:class:`~clipsam.Segmentation`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core import masks as M
from ..core.regions import Regions
from ..core.taxonomy import Taxonomy
from ..result import Segmentation
from .label import Labelled
from .prepare import Work

__all__ = ["assemble", "prompt_result"]


def assemble(work: Work, regions: Regions, labelled: Labelled | None, keep: Sequence[int], *,
             query: tuple[str, ...] = (), taxonomy: Taxonomy | None = None, feats: np.ndarray | None = None,
             models: dict[str, str] | None = None) -> Segmentation:
    """The *keep* rows of *regions* (processing size) at the original resolution, with their labels.

    Region ids are the rows' canonical positions; a kept region's parent is its nearest kept ancestor. With
    *labelled* ``None`` the regions are returned unlabelled (``label`` ``None``, kind ``unknown``).
    """
    rows = sorted({int(i) for i in keep})
    rles = _full_size(work, [regions.rles[i] for i in rows])
    label, label_path, path_scores, score, kind = [], [], [], [], []
    for i in rows:
        if labelled is None:
            label.append(None)
            label_path.append(())
            path_scores.append(())
            score.append(0.0)
            kind.append("unknown")
            continue
        d, k = labelled.decisions[i], labelled.kinds[i]
        kind.append(k)
        if d.node is not None:
            label.append(d.node.name)
            label_path.append(tuple(d.node.path))
            path_scores.append(tuple(float(s) for s in d.path_scores))
            score.append(float(d.score))
        else:
            label.append(k)
            label_path.append(())
            path_scores.append(())
            score.append(0.0)
    picked = regions.take(rows)  # parents re-linked to kept ancestors
    embeddings = feats[rows] if feats is not None and len(rows) and len(feats) == len(regions) else None
    out = Regions.from_rles(rles, predicted_iou=picked.predicted_iou, stability_score=picked.stability_score,
                            parent=picked.parent, ids=rows, kind=kind, label=label, label_path=label_path,
                            path_scores=path_scores, score=score, embeddings=embeddings)
    return Segmentation(image_size=work.original_size, regions=out, image_path=work.path, query=query,
                        taxonomy=taxonomy.name if taxonomy else None, models=dict(models or {}))


def _full_size(work: Work, rles: list[M.RLE]) -> list[M.RLE]:
    """Processing-size masks at the original size: from SAM's logits there when the proposer embedded the original
    (:mod:`~clipsam.stages.fullres`), else nearest neighbour."""
    if work.fullres is not None:
        return work.fullres.many(rles)
    return [M.resize(r, work.original_size) for r in rles]


def prompt_result(work: Work, masks: np.ndarray, iou: np.ndarray, low_res_logits: np.ndarray,
                  models: dict[str, str] | None = None, prompts: dict[str, Any] | None = None,
                  full_rles: list[M.RLE] | None = None) -> Segmentation:
    """A prompted result: SAM's masks (processing size, best first) as ``prompt`` regions at full resolution
    (*full_rles* when the proposer made them there), with the *prompts* that made them (see
    :attr:`Segmentation.prompts`)."""
    rles = full_rles if full_rles is not None else \
        [M.resize(M.encode(m), work.original_size) for m in masks]  # type: ignore[arg-type]
    n = len(rles)
    regions = Regions.from_rles(rles, predicted_iou=np.asarray(iou, dtype=np.float64),
                                stability_score=np.ones(n), kind=("prompt",) * n)
    return Segmentation(image_size=work.original_size, regions=regions, image_path=work.path,
                        models=dict(models or {}), prompts=dict(prompts or {}), low_res_logits=low_res_logits)
