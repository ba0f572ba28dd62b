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
    "difference",
    "encode",
    "intersection_matrix",
    "iou_matrix",
    "merge",
    "pairwise_intersections",
    "resize",
    "touching",
]

#: Side of the square tiles :func:`pairwise_intersections` works in (pixels).
TILE = 128
#: Mean RLE string length per mask from which tiles beat pycocotools' run-by-run pairs (measured in
#: ``benchmarks/nest_scale.py``: smooth masks of ~650 characters favour pycocotools, noisy ones of ~68,000 tiles).
TILED_FROM_CHARS = 4000


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


def pairwise_intersections(rles: Sequence[RLE], tile: int = TILE, method: str = "auto") -> np.ndarray:
    """Exact intersection areas of every pair of *rles*, ``(N, N) int64`` (the diagonal holds the areas).

    The same numbers as :func:`intersection_matrix` of the set with itself. ``method="tiles"`` computes them so
    that the cost follows how much the masks overlap rather than how many runs they have (``"runs"``:
    pycocotools, run by run; ``"auto"``: runs for smooth masks, tiles from :data:`TILED_FROM_CHARS` characters of
    RLE per mask on average). Tiles: the image is cut into ``tile x tile`` squares,
    each mask is decoded once and kept bit-packed inside its box (1 bit per box pixel), and in every square the
    masks whose boxes reach it are unpacked there and multiplied, ``X @ X.T`` in float32 (exact: at most
    ``tile**2`` ones are summed). Pairs whose boxes never meet cost nothing; noisy masks with thousands of runs
    (random-weight SAM) cost what smooth ones do.
    """
    n = len(rles)
    out = np.zeros((n, n), dtype=np.int64)
    if n == 0:
        return out
    _check_same_size(rles)
    if method not in ("auto", "tiles", "runs"):
        raise ValueError(f"method must be auto, tiles or runs, got {method!r}")
    chars = sum(len(r["counts"]) for r in rles) / n
    if method == "runs" or (method == "auto" and chars < TILED_FROM_CHARS):
        return intersection_matrix(rles, rles)
    h, w = (int(v) for v in rles[0]["size"])
    boxes = np.asarray(bbox_xywh(list(rles)), dtype=np.float64).reshape(n, 4)
    x0, y0 = boxes[:, 0].astype(np.int64), boxes[:, 1].astype(np.int64)
    x1 = np.minimum(x0 + np.ceil(boxes[:, 2]).astype(np.int64), w)
    y1 = np.minimum(y0 + np.ceil(boxes[:, 3]).astype(np.int64), h)
    packed: list[tuple[np.ndarray, int] | None] = []
    for i, r in enumerate(rles):
        if x1[i] <= x0[i] or y1[i] <= y0[i]:
            packed.append(None)
            continue
        crop = decode(r)[y0[i]:y1[i], x0[i]:x1[i]]
        packed.append((np.packbits(crop, axis=1), int(x1[i] - x0[i])))
    ty0, ty1 = y0 // tile, np.maximum(y1 - 1, y0) // tile
    tx0, tx1 = x0 // tile, np.maximum(x1 - 1, x0) // tile
    for ty in range((h + tile - 1) // tile):
        for tx in range((w + tile - 1) // tile):
            idx = np.flatnonzero((ty0 <= ty) & (ty <= ty1) & (tx0 <= tx) & (tx <= tx1)
                                 & np.asarray([p is not None for p in packed]))
            if not len(idx):
                continue
            r0, c0 = ty * tile, tx * tile
            r1, c1 = min(r0 + tile, h), min(c0 + tile, w)
            block = np.zeros((len(idx), r1 - r0, c1 - c0), dtype=np.float32)
            for k, i in enumerate(idx):
                bits, width = packed[i]  # type: ignore[misc]
                ya, yb = max(r0, y0[i]), min(r1, y1[i])
                xa, xb = max(c0, x0[i]), min(c1, x1[i])
                if ya >= yb or xa >= xb:
                    continue
                rows = np.unpackbits(bits[ya - y0[i]: yb - y0[i]], axis=1, count=width)
                block[k, ya - r0: yb - r0, xa - c0: xb - c0] = rows[:, xa - x0[i]: xb - x0[i]]
            flat = block.reshape(len(idx), -1)
            out[np.ix_(idx, idx)] += np.rint(flat @ flat.T).astype(np.int64)
    return out


def contained_share(rles: Sequence[RLE], inter: np.ndarray | None = None) -> np.ndarray:
    """``share[i, j]`` = fraction of mask *i* that lies inside mask *j*, ``(N, N) float64``.

    The diagonal is 1 for non-empty masks; rows of empty masks are 0. *inter*: the masks' pairwise intersections,
    when already computed (:func:`pairwise_intersections`).
    """
    inter = (pairwise_intersections(rles) if inter is None else inter).astype(np.float64)
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


def difference(a: RLE, b: RLE) -> RLE:
    """The pixels of *a* outside *b* (both one size)."""
    _check_same_size([a, b])
    return encode(decode(a) & ~decode(b))  # type: ignore[return-value]


def touching(a: RLE, b: RLE) -> bool:
    """Whether two masks of one size overlap or touch (share an edge or a corner)."""
    _check_same_size([a, b])
    (ax, ay, aw, ah), (bx, by, bw, bh) = bbox_xywh(a), bbox_xywh(b)
    if aw == 0 or bw == 0 or ax > bx + bw or bx > ax + aw or ay > by + bh or by > ay + ah:
        return False  # boxes a pixel apart or more
    if area(merge([a, b], intersect=True)) > 0:
        return True
    m = decode(a)
    grown = m.copy()
    grown[1:] |= m[:-1]
    grown[:-1] |= m[1:]
    grown[:, 1:] |= grown[:, :-1].copy()
    grown[:, :-1] |= grown[:, 1:].copy()
    return bool((grown & decode(b)).any())


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
