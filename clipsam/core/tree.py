"""The part-whole mask tree: near-duplicate merging and containment nesting. Pure numpy; no torch.

Everything here is deterministic and independent of the order the masks arrive in: masks are first put in a
canonical order (larger first, then by position, then by RLE), which also gives stable ids.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import masks as M

#: A child belongs to the smallest region that holds at least this share of its pixels.
DEFAULT_CONTAINMENT = 0.9
#: Two masks with at least this IoU are the same region; the better one is kept.
DEFAULT_DUPLICATE_IOU = 0.9

__all__ = ["DEFAULT_CONTAINMENT", "DEFAULT_DUPLICATE_IOU", "build_parents", "canonical_order", "dedupe", "dedupe_kept",
           "depths"]


def canonical_order(rles: Sequence[M.RLE], areas: np.ndarray | None = None, boxes: np.ndarray | None = None
                    ) -> np.ndarray:
    """Indices that sort masks by area (descending), then box (y, x, h, w), then RLE string (*areas*, *boxes*: the
    masks' own, when already computed)."""
    if len(rles) == 0:
        return np.zeros(0, dtype=np.int64)
    areas = np.asarray(M.area(list(rles)) if areas is None else areas)
    boxes = np.asarray(M.bbox_xywh(list(rles)) if boxes is None else boxes)
    keys = [(-int(areas[i]), boxes[i, 1], boxes[i, 0], boxes[i, 3], boxes[i, 2], str(rles[i]["counts"]))
            for i in range(len(rles))]
    return np.asarray(sorted(range(len(rles)), key=keys.__getitem__), dtype=np.int64)


def _iou(inter: np.ndarray) -> np.ndarray:
    areas = np.diag(inter).astype(np.float64)
    union = areas[:, None] + areas[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1.0), 0.0)


def dedupe(rles: Sequence[M.RLE], quality: Sequence[float], iou_threshold: float = DEFAULT_DUPLICATE_IOU,
           inter: np.ndarray | None = None) -> np.ndarray:
    """Indices of the masks to keep (ascending) after merging near-duplicates.

    Greedy by *quality* (ties by canonical order): a mask whose IoU with an already kept one reaches
    *iou_threshold* is dropped. Empty masks are dropped. *inter*: the masks' pairwise intersections, when already
    computed (:func:`~clipsam.masks.pairwise_intersections`; :func:`nest` shares them with :func:`build_parents`).
    """
    n = len(rles)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rank = np.empty(n, dtype=np.int64)
    rank[canonical_order(rles)] = np.arange(n)
    q = np.asarray(quality, dtype=np.float64)
    order = sorted(range(n), key=lambda i: (-q[i], rank[i]))
    inter = M.pairwise_intersections(rles) if inter is None else inter
    iou = _iou(inter)
    areas = np.diag(inter)
    kept: list[int] = []
    for i in order:
        if areas[i] == 0:
            continue
        if kept and iou[i, kept].max() >= iou_threshold:
            continue
        kept.append(i)
    return np.asarray(sorted(kept), dtype=np.int64)


def dedupe_kept(rles: Sequence[M.RLE], quality: Sequence[float], iou_threshold: float = DEFAULT_DUPLICATE_IOU,
                *, chunk: int = 128, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """:func:`dedupe`'s kept indices (ascending) and the kept masks' pairwise intersections (in that order), without
    the intersections of every pair: masks are taken in :func:`dedupe`'s order, *chunk* at a time, and each is
    compared only with the masks already kept and the rest of its chunk. SAM's grid returns each object many times
    (3,072 masks at 32x32 points, a few hundred regions), so this costs masks x kept, not masks squared; the result
    is :func:`dedupe`'s, exactly. *method*: as :func:`~clipsam.core.masks.pairwise_intersections`."""
    n = len(rles)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.int64)
    overlaps = M.Overlaps(rles, method=method)
    areas = overlaps.areas
    rank = np.empty(n, dtype=np.int64)
    rank[canonical_order(rles, areas, overlaps.boxes)] = np.arange(n)
    q = np.asarray(quality, dtype=np.float64)
    order = [i for i in sorted(range(n), key=lambda i: (-q[i], rank[i])) if areas[i] > 0]
    kept: list[int] = []
    inter = np.zeros((0, 0), dtype=np.int64)  # among the kept, in the order they were kept
    for start in range(0, len(order), chunk):
        batch = order[start:start + chunk]
        both = overlaps.cross(batch, kept + batch)  # against the kept, then within the batch
        new: list[int] = []
        for a, i in enumerate(batch):
            x = np.concatenate([both[a, :len(kept)], both[a, len(kept) + np.asarray(new, dtype=np.int64)]])
            union = areas[i] + areas[np.asarray(kept + [batch[b] for b in new], dtype=np.int64)] - x
            if not len(x) or (x / np.maximum(union, 1.0)).max() < iou_threshold:
                new.append(a)
        if new:
            picked = np.asarray(new, dtype=np.int64)
            old_new = both[picked, :len(kept)]
            inter = np.block([[inter, old_new.T], [old_new, both[np.ix_(picked, len(kept) + picked)]]])
            kept += [batch[a] for a in new]
    perm = np.argsort(kept, kind="stable")
    return np.asarray(kept, dtype=np.int64)[perm], inter[np.ix_(perm, perm)]


def build_parents(rles: Sequence[M.RLE], containment: float = DEFAULT_CONTAINMENT,
                  inter: np.ndarray | None = None) -> np.ndarray:
    """``parent[i]`` = index of the smallest mask holding at least *containment* of mask *i*, or -1 (*inter*:
    the pairwise intersections, when already computed).

    A parent always comes strictly before its child in canonical order (larger, or equal area and earlier), so
    the result is a forest.
    """
    n = len(rles)
    parent = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return parent
    share = M.contained_share(rles, inter)
    rank = np.empty(n, dtype=np.int64)
    rank[canonical_order(rles)] = np.arange(n)
    # candidates of row i: masks earlier in canonical order holding >= containment of i; the parent is the latest
    # of them in canonical order (= the smallest)
    cand = (share >= containment) & (rank[None, :] < rank[:, None])
    scored = np.where(cand, rank[None, :], -1)
    best = scored.argmax(axis=1)
    has = cand.any(axis=1)
    parent[has] = best[has]
    return parent


def depths(parent: np.ndarray) -> np.ndarray:
    """Depth of every node of a forest given by *parent* (roots: 0)."""
    out = np.zeros(len(parent), dtype=np.int64)
    for i in range(len(parent)):
        d, j = 0, parent[i]
        while j >= 0:
            d += 1
            j = parent[j]
        out[i] = d
    return out
