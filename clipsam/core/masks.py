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
    "Overlaps",
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
    RLE per mask on average); see :class:`Overlaps`, which also gives any rows against any columns.
    """
    every = np.arange(len(rles))
    return Overlaps(rles, tile=tile, method=method).cross(every, every)


class Overlaps:
    """Exact intersection areas among one set of masks, any rows against any columns (:meth:`cross`), each mask
    decoded once: what :func:`~clipsam.core.tree.dedupe` needs to compare every mask with the few already kept
    rather than with every other.

    Tiles (``method="tiles"``, or ``"auto"`` for noisy masks): each mask is kept bit-packed inside its box (1 bit per
    box pixel); the image is cut into ``tile x tile`` squares, and in every square the masks whose boxes reach it
    are unpacked there and multiplied, ``rows @ cols.T`` in float32 (exact: at most ``tile**2`` ones are summed).
    Each band of tile rows is unpacked once per call, not once per square. Pairs whose boxes never meet cost
    nothing; noisy masks with thousands of runs (random-weight SAM) cost what smooth ones do. Runs (``"runs"``, or
    ``"auto"`` for smooth masks): pycocotools, pair by pair.
    """

    #: Most bytes of unpacked pixels one band holds (its width shrinks to fit): ~64 MB.
    BAND_BYTES = 1 << 26

    def __init__(self, rles: Sequence[RLE], tile: int = TILE, method: str = "auto") -> None:
        if method not in ("auto", "tiles", "runs"):
            raise ValueError(f"method must be auto, tiles or runs, got {method!r}")
        self.rles, self.tile = list(rles), tile
        n = len(self.rles)
        if n:
            _check_same_size(self.rles)
        #: every mask's area and box (x, y, w, h), for callers that need them too
        self.areas = np.asarray(area(self.rles) if n else [], dtype=np.int64)
        self.boxes = np.asarray(bbox_xywh(self.rles) if n else [], dtype=np.float64).reshape(n, 4)
        chars = sum(len(r["counts"]) for r in self.rles) / max(n, 1)
        self.tiled = n > 0 and (method == "tiles" or (method == "auto" and chars >= TILED_FROM_CHARS))
        if not self.tiled:
            return
        self.h, self.w = (int(v) for v in self.rles[0]["size"])
        boxes = self.boxes
        self.x0, self.y0 = boxes[:, 0].astype(np.int64), boxes[:, 1].astype(np.int64)
        self.x1 = np.minimum(self.x0 + np.ceil(boxes[:, 2]).astype(np.int64), self.w)
        self.y1 = np.minimum(self.y0 + np.ceil(boxes[:, 3]).astype(np.int64), self.h)
        self.live = (self.x1 > self.x0) & (self.y1 > self.y0)  # empty masks take part in nothing
        self.bits = [self._pack(i) if self.live[i] else None for i in range(n)]

    def _pack(self, i: int) -> np.ndarray:
        # pycocotools decodes column-major; packing a row-major copy of the box is twice as fast
        box = decode(self.rles[i])[self.y0[i]:self.y1[i], self.x0[i]:self.x1[i]]
        return np.packbits(np.ascontiguousarray(box), axis=1)

    def cross(self, rows: Sequence[int] | np.ndarray, cols: Sequence[int] | np.ndarray) -> np.ndarray:
        """Intersection areas of masks *rows* against masks *cols* (indices into the set), ``(len(rows),
        len(cols)) int64``."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        out = np.zeros((len(rows), len(cols)), dtype=np.int64)
        if not len(rows) or not len(cols):
            return out
        if not self.tiled:
            return intersection_matrix([self.rles[i] for i in rows], [self.rles[j] for j in cols])
        t = self.tile
        where = np.unique(np.concatenate([rows, cols]))
        where = where[self.live[where]]
        row_at, col_at = np.full(len(self.rles), -1), np.full(len(self.rles), -1)
        row_at[rows], col_at[cols] = np.arange(len(rows)), np.arange(len(cols))
        for r0 in range(0, self.h, t):
            r1 = min(r0 + t, self.h)
            band = where[(self.y0[where] < r1) & (self.y1[where] > r0)]
            if not len(band):
                continue
            width = max(t, (self.BAND_BYTES // max(1, len(band) * t)) // t * t)
            for b0 in range(0, self.w, width):
                self._band(out, band, row_at, col_at, r0, r1, b0, min(b0 + width, self.w))
        return out

    def _band(self, out: np.ndarray, band: np.ndarray, row_at: np.ndarray, col_at: np.ndarray, r0: int, r1: int,
              b0: int, b1: int) -> None:
        """Add the squares of rows ``r0:r1``, columns ``b0:b1`` to *out*: *band*'s masks unpacked there once."""
        band = band[(self.x0[band] < b1) & (self.x1[band] > b0)]
        pixels = np.zeros((len(band), r1 - r0, b1 - b0), dtype=np.uint8)
        for k, i in enumerate(band):
            ya, yb = max(r0, self.y0[i]), min(r1, self.y1[i])
            xa, xb = max(b0, self.x0[i]), min(b1, self.x1[i])
            # unpack only the bytes that hold columns xa:xb of the box
            lo, hi = (xa - self.x0[i]) // 8, (xb - self.x0[i] + 7) // 8
            cut = np.unpackbits(self.bits[i][ya - self.y0[i]: yb - self.y0[i], lo:hi], axis=1)  # type: ignore[index]
            skip = xa - self.x0[i] - 8 * lo
            pixels[k, ya - r0: yb - r0, xa - b0: xb - b0] = cut[:, skip: skip + xb - xa]
        for c0 in range(b0, b1, self.tile):
            c1 = min(c0 + self.tile, b1)
            here = (self.x0[band] < c1) & (self.x1[band] > c0)
            r_k = np.flatnonzero(here & (row_at[band] >= 0))
            c_k = np.flatnonzero(here & (col_at[band] >= 0))
            if not len(r_k) or not len(c_k):
                continue
            block = pixels[:, :, c0 - b0: c1 - b0]
            a = block[r_k].reshape(len(r_k), -1).astype(np.float32)
            b = block[c_k].reshape(len(c_k), -1).astype(np.float32)
            out[np.ix_(row_at[band[r_k]], col_at[band[c_k]])] += np.rint(a @ b.T).astype(np.int64)


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
