"""Binary masks as COCO run-length encoding (RLE): the one mask format that travels through clipsam.

Pure numpy + pycocotools; no torch. An RLE here is the JSON-ready COCO dict
``{"size": [H, W], "counts": "<compressed string>"}`` (``counts`` as ``str``, not ``bytes``). Dense masks
are ``(H, W) bool`` arrays and are only made when asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as _coco

RLE = dict[str, Any]

#: Most RLEs handed to one pycocotools batch call. pycocotools 2.0.11's ``area`` keeps the count in a uint8 and
#: raises ``OverflowError`` from 256 masks on; every batch call here goes through :func:`_batched`.
COCO_BATCH = 255

__all__ = [
    "COCO_BATCH",
    "RLE",
    "area",
    "bbox_xywh",
    "contained_share",
    "decode",
    "encode",
    "intersection_matrix",
    "iou_matrix",
    "merge",
    "resize",
]


def _to_coco(rle: RLE) -> dict[str, Any]:
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE (list of run lengths)
        h, w = rle["size"]
        return _coco.frPyObjects(rle, h, w)
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _from_coco(rle: dict[str, Any]) -> RLE:
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def encode(mask: np.ndarray) -> RLE | list[RLE]:
    """Encode a ``(H, W)`` mask to one RLE, or an ``(N, H, W)`` stack to a list of N RLEs.

    Any dtype is accepted; non-zero means foreground.
    """
    mask = np.asarray(mask)
    if mask.ndim == 2:
        return _from_coco(_coco.encode(np.asfortranarray(mask.astype(np.uint8, copy=False))))
    if mask.ndim == 3:
        if mask.shape[0] == 0:
            return []
        stacked = np.asfortranarray(np.moveaxis(mask.astype(np.uint8, copy=False), 0, -1))
        return [_from_coco(r) for r in _coco.encode(stacked)]
    raise ValueError(f"encode expects a (H, W) or (N, H, W) mask, got shape {mask.shape}")


def decode(rle: RLE) -> np.ndarray:
    """Decode one RLE to a ``(H, W) bool`` mask."""
    return _coco.decode(_to_coco(rle)).astype(bool, copy=False)


def area(rle: RLE | Sequence[RLE]) -> int | np.ndarray:
    """Foreground pixel count of one RLE (``int``) or of several (``(N,) int64``)."""
    if isinstance(rle, dict):
        return int(_coco.area(_to_coco(rle)))
    if len(rle) == 0:
        return np.zeros(0, dtype=np.int64)
    coco = [_to_coco(r) for r in rle]
    return np.concatenate([np.asarray(_coco.area(part), dtype=np.int64).reshape(-1) for part in _batched(coco)])


def bbox_xywh(rle: RLE | Sequence[RLE]) -> tuple[float, float, float, float] | np.ndarray:
    """Tight box ``(x, y, w, h)`` in pixels of one RLE, or ``(N, 4) float64`` boxes of several.

    An empty mask has the box ``(0, 0, 0, 0)``.
    """
    if isinstance(rle, dict):
        return tuple(float(v) for v in _coco.toBbox(_to_coco(rle)))  # type: ignore[return-value]
    if len(rle) == 0:
        return np.zeros((0, 4), dtype=np.float64)
    coco = [_to_coco(r) for r in rle]
    return np.concatenate([np.asarray(_coco.toBbox(part), dtype=np.float64).reshape(-1, 4) for part in _batched(coco)])


def iou_matrix(a: Sequence[RLE], b: Sequence[RLE]) -> np.ndarray:
    """Pairwise mask IoU, ``(len(a), len(b)) float64``."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    _check_same_size(list(a) + list(b))
    iou = _coco.iou([_to_coco(r) for r in a], [_to_coco(r) for r in b], [0] * len(b))
    return np.asarray(iou, dtype=np.float64).reshape(len(a), len(b))


def intersection_matrix(a: Sequence[RLE], b: Sequence[RLE]) -> np.ndarray:
    """Pairwise intersection areas in pixels, ``(len(a), len(b)) int64``.

    Derived from the IoU in C: ``I = IoU * (|A| + |B|) / (1 + IoU)``, rounded to whole pixels.
    """
    iou = iou_matrix(a, b)
    if iou.size == 0:
        return np.zeros(iou.shape, dtype=np.int64)
    sums = np.asarray(area(list(a)), dtype=np.float64)[:, None] + np.asarray(area(list(b)), dtype=np.float64)[None]
    return np.rint(iou * sums / (1.0 + iou)).astype(np.int64)


def contained_share(rles: Sequence[RLE]) -> np.ndarray:
    """``share[i, j]`` = fraction of mask *i* that lies inside mask *j*, ``(N, N) float64``.

    The diagonal is 1 for non-empty masks; rows of empty masks are 0.
    """
    inter = intersection_matrix(rles, rles).astype(np.float64)
    areas = np.asarray(area(list(rles)), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(areas[:, None] > 0, inter / np.maximum(areas[:, None], 1.0), 0.0)
    return share


def merge(rles: Sequence[RLE], intersect: bool = False) -> RLE:
    """Union (or intersection) of several RLEs of one size."""
    if len(rles) == 0:
        raise ValueError("merge needs at least one RLE")
    _check_same_size(rles)
    return _from_coco(_coco.merge([_to_coco(r) for r in rles], intersect=int(intersect)))


def resize(rle: RLE, size_hw: tuple[int, int]) -> RLE:
    """Resample one mask to ``size_hw`` = (H, W) by nearest neighbour (pixel centres), returned as RLE."""
    h, w = (int(size_hw[0]), int(size_hw[1]))
    src_h, src_w = rle["size"]
    if (src_h, src_w) == (h, w):
        return _from_coco(_to_coco(rle))
    dense = decode(rle)
    rows = np.minimum(((np.arange(h) + 0.5) * src_h / h).astype(np.int64), src_h - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * src_w / w).astype(np.int64), src_w - 1)
    return encode(dense[rows[:, None], cols[None, :]])  # type: ignore[return-value]


def _batched(items: list[Any]) -> list[list[Any]]:
    return [items[i:i + COCO_BATCH] for i in range(0, len(items), COCO_BATCH)]


def _check_same_size(rles: Sequence[RLE]) -> None:
    sizes = {tuple(r["size"]) for r in rles}
    if len(sizes) > 1:
        raise ValueError(f"masks of different sizes cannot be compared: {sorted(sizes)}")
