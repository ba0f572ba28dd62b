"""The regions of one image: one columnar container (:class:`Regions`) and its frozen rows (:class:`Region`).

Pure numpy; no torch. In the spirit of supervision's ``Detections``: parallel fields, validated in
``__post_init__``, filtered together (``regions[mask]``, ``regions[[0, 3]]``), with parent links kept consistent:
a kept region whose parent was dropped is re-attached to its nearest kept ancestor. Masks are COCO RLE; dense
arrays are decoded only on request. Boxes are ``bbox_xywh`` pixels everywhere (converted only at the COCO and
supervision boundaries).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from . import masks as M
from .boxes import xywh_to_xyxy

#: ``Region.kind`` values.
KINDS = ("object", "part", "unknown", "unknown part", "prompt")

__all__ = ["KINDS", "Region", "Regions"]


@dataclass(frozen=True)
class Region:
    """One segmented region.

    Attributes:
        id: stable id within its :class:`~clipsam.Segmentation` (canonical order: larger regions first).
        rle: the mask, COCO RLE at the image's original size.
        bbox_xywh: tight box ``(x, y, w, h)`` in original-image pixels.
        area: mask area in pixels.
        label: the deepest accepted label (``dog``), ``unknown`` / ``unknown part``, or ``None`` (not labelled).
        score: probability of the whole label path in [0, 1] (0 when not labelled).
        label_path: labels from the top level down (``("animal", "dog", "puppy")``).
        path_scores: probability of the path down to each level of *label_path* (non-increasing).
        kind: ``object``, ``part``, ``unknown``, ``unknown part`` or ``prompt`` (from a click or box, unlabelled).
        predicted_iou: SAM's estimate of the mask's quality.
        stability_score: SAM's stability score (1.0 for prompted masks).
        parent_id: id of the region that contains this one in the part-whole tree, or ``None``.
    """

    id: int
    rle: M.RLE = field(repr=False)
    bbox_xywh: tuple[float, float, float, float]
    area: int
    label: str | None = None
    score: float = 0.0
    label_path: tuple[str, ...] = ()
    path_scores: tuple[float, ...] = ()
    kind: str = "object"
    predicted_iou: float = 0.0
    stability_score: float = 0.0
    parent_id: int | None = None

    @property
    def bbox_xyxy(self) -> tuple[float, float, float, float]:
        """End-exclusive ``(x0, y0, x1, y1)``: ``x1 = x + w`` (see :mod:`clipsam.core.boxes`)."""
        x0, y0, x1, y1 = xywh_to_xyxy(self.bbox_xywh)
        return (float(x0), float(y0), float(x1), float(y1))

    @property
    def label_path_str(self) -> str:
        return "/".join(self.label_path)

    def mask(self) -> np.ndarray:
        """The dense mask, ``(H, W) bool``."""
        return M.decode(self.rle)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bbox_xywh"] = [float(v) for v in self.bbox_xywh]
        d["label_path"] = list(self.label_path)
        d["path_scores"] = [float(s) for s in self.path_scores]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Region:
        return cls(
            id=int(d["id"]), rle={"size": list(d["rle"]["size"]), "counts": d["rle"]["counts"]},
            bbox_xywh=tuple(float(v) for v in d["bbox_xywh"]), area=int(d["area"]), label=d.get("label"),
            score=float(d.get("score", 0.0)), label_path=tuple(d.get("label_path", ())),
            path_scores=tuple(float(s) for s in d.get("path_scores", ())), kind=d.get("kind", "object"),
            predicted_iou=float(d.get("predicted_iou", 0.0)), stability_score=float(d.get("stability_score", 0.0)),
            parent_id=d.get("parent_id"),
        )


def _tuple(values: Any, n: int, default: Any) -> tuple[Any, ...]:
    return tuple(values) if values is not None else (default,) * n


@dataclass(frozen=True, eq=False)
class Regions:
    """N regions of one image as parallel fields.

    Attributes:
        rles: ``N`` COCO RLEs of one size.
        bbox_xywh: ``(N, 4) float64`` tight boxes, pixels.
        area: ``(N,) int64`` mask areas, pixels.
        ids: ``(N,) int64`` stable region ids.
        parent: ``(N,) int64`` *row index* of each region's parent in this container, ``-1`` for roots.
        predicted_iou, stability_score, score: ``(N,) float64``.
        kind, label, label_path, path_scores: ``N``-tuples.
        embeddings: ``(N, D) float32`` unit CLIP embeddings of the regions' crops, or ``None``.

    Build with :meth:`from_rles` (boxes and areas computed in C) or :meth:`from_rows`.
    """

    rles: tuple[M.RLE, ...]
    bbox_xywh: np.ndarray
    area: np.ndarray
    ids: np.ndarray
    parent: np.ndarray
    predicted_iou: np.ndarray
    stability_score: np.ndarray
    score: np.ndarray
    kind: tuple[str, ...]
    label: tuple[str | None, ...]
    label_path: tuple[tuple[str, ...], ...]
    path_scores: tuple[tuple[float, ...], ...]
    embeddings: np.ndarray | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # a notebook shows a summary, not every RLE and array
        first = ", ".join(f"{lbl or kind} {score:.2f}" for lbl, kind, score in
                          zip(self.label[:5], self.kind[:5], self.score[:5], strict=True))
        return f"Regions({len(self.rles)} regions{': ' + first if first else ''}{', …' if len(self.rles) > 5 else ''})"

    def __post_init__(self) -> None:
        n = len(self.rles)
        set_ = object.__setattr__
        set_(self, "rles", tuple(self.rles))
        for name, dtype, shape in (("bbox_xywh", np.float64, (n, 4)), ("area", np.int64, (n,)),
                                   ("ids", np.int64, (n,)), ("parent", np.int64, (n,)),
                                   ("predicted_iou", np.float64, (n,)), ("stability_score", np.float64, (n,)),
                                   ("score", np.float64, (n,))):
            arr = np.asarray(getattr(self, name), dtype=dtype)
            if arr.shape != shape:
                raise ValueError(f"Regions.{name} must have shape {shape} for {n} regions, got {arr.shape}")
            set_(self, name, arr)
        for name in ("kind", "label", "label_path", "path_scores"):
            value = tuple(getattr(self, name))
            if len(value) != n:
                raise ValueError(f"Regions.{name} must have {n} entries, got {len(value)}")
            set_(self, name, value)
        bad = [k for k in self.kind if k not in KINDS]
        if bad:
            raise ValueError(f"unknown region kind(s) {sorted(set(bad))}; known: {KINDS}")
        if n and ((self.parent < -1) | (self.parent >= n) | (self.parent == np.arange(n))).any():
            raise ValueError("Regions.parent must hold row indices of other regions, or -1")
        if self.embeddings is not None:
            emb = np.asarray(self.embeddings, dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] != n:
                raise ValueError(f"Regions.embeddings must be (N, D) with N = {n}, got {emb.shape}")
            set_(self, "embeddings", emb)

    # -- construction --------------------------------------------------------------------------------------
    @classmethod
    def empty(cls) -> Regions:
        return cls.from_rles([])

    @classmethod
    def from_rles(cls, rles: Sequence[M.RLE], *, predicted_iou: Sequence[float] | None = None,
                  stability_score: Sequence[float] | None = None, parent: Sequence[int] | None = None,
                  ids: Sequence[int] | None = None, kind: Sequence[str] | None = None, **labels: Any) -> Regions:
        """Regions from masks (boxes and areas computed here); unlabelled ``unknown`` unless told otherwise."""
        n = len(rles)
        return cls(
            rles=tuple(rles), bbox_xywh=M.bbox_xywh(list(rles)), area=M.area(list(rles)),
            ids=np.arange(n) if ids is None else ids, parent=np.full(n, -1) if parent is None else parent,
            predicted_iou=np.zeros(n) if predicted_iou is None else predicted_iou,
            stability_score=np.zeros(n) if stability_score is None else stability_score,
            score=labels.pop("score", np.zeros(n)), kind=_tuple(kind, n, "unknown"),
            label=_tuple(labels.pop("label", None), n, None), label_path=_tuple(labels.pop("label_path", None), n, ()),
            path_scores=_tuple(labels.pop("path_scores", None), n, ()), **labels,
        )

    @classmethod
    def from_rows(cls, rows: Sequence[Region], embeddings: np.ndarray | None = None) -> Regions:
        """Regions from :class:`Region` rows; ``parent_id`` links become row indices (dangling ones: roots)."""
        index = {r.id: i for i, r in enumerate(rows)}
        return cls(
            rles=tuple(r.rle for r in rows),
            bbox_xywh=np.asarray([r.bbox_xywh for r in rows], dtype=np.float64).reshape(-1, 4),
            area=[r.area for r in rows], ids=[r.id for r in rows],
            parent=[index.get(r.parent_id, -1) if r.parent_id is not None else -1 for r in rows],
            predicted_iou=[r.predicted_iou for r in rows], stability_score=[r.stability_score for r in rows],
            score=[r.score for r in rows], kind=[r.kind for r in rows], label=[r.label for r in rows],
            label_path=[tuple(r.label_path) for r in rows], path_scores=[tuple(r.path_scores) for r in rows],
            embeddings=embeddings,
        )

    # -- container protocol --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rles)

    def __iter__(self) -> Iterator[Region]:
        return (self.row(i) for i in range(len(self)))

    def row(self, i: int) -> Region:
        """Row *i* as a frozen :class:`Region` (``parent_id`` is the parent's id)."""
        p = int(self.parent[i])
        return Region(
            id=int(self.ids[i]), rle=self.rles[i], bbox_xywh=tuple(float(v) for v in self.bbox_xywh[i]),
            area=int(self.area[i]), label=self.label[i], score=float(self.score[i]), label_path=self.label_path[i],
            path_scores=self.path_scores[i], kind=self.kind[i], predicted_iou=float(self.predicted_iou[i]),
            stability_score=float(self.stability_score[i]), parent_id=int(self.ids[p]) if p >= 0 else None,
        )

    def __getitem__(self, key: Any) -> Any:
        """``regions[i]`` is a :class:`Region`; a slice, index list or boolean mask gives a new :class:`Regions`
        whose parent links skip the regions left out."""
        if isinstance(key, (int, np.integer)):
            n = len(self)
            if not -n <= int(key) < n:
                raise IndexError(f"region index {int(key)} out of range for {n} regions")
            return self.row(int(key) % n)
        if isinstance(key, slice):
            rows = np.arange(len(self))[key]
        else:
            arr = np.asarray(key)
            if arr.dtype == bool:
                if arr.shape != (len(self),):
                    raise IndexError(f"boolean index of shape {arr.shape} for {len(self)} regions")
                rows = np.flatnonzero(arr)
            else:
                rows = arr.astype(np.int64).reshape(-1)
        return self.take(rows)

    def take(self, rows: Sequence[int] | np.ndarray) -> Regions:
        """The regions at *rows* (in that order), parents re-linked to the nearest kept ancestor."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        position = np.full(len(self), -1, dtype=np.int64)
        position[rows] = np.arange(len(rows))
        parent = np.full(len(rows), -1, dtype=np.int64)
        for k, i in enumerate(rows):
            p = int(self.parent[i])
            while p >= 0 and position[p] < 0:
                p = int(self.parent[p])
            parent[k] = position[p] if p >= 0 else -1
        pick = [int(i) for i in rows]
        return replace(
            self, rles=tuple(self.rles[i] for i in pick), bbox_xywh=self.bbox_xywh[rows], area=self.area[rows],
            ids=self.ids[rows], parent=parent, predicted_iou=self.predicted_iou[rows],
            stability_score=self.stability_score[rows], score=self.score[rows],
            kind=tuple(self.kind[i] for i in pick), label=tuple(self.label[i] for i in pick),
            label_path=tuple(self.label_path[i] for i in pick), path_scores=tuple(self.path_scores[i] for i in pick),
            embeddings=None if self.embeddings is None else self.embeddings[rows],
        )

    def replace(self, **changes: Any) -> Regions:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **changes)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, tuple):  # Segmentation.regions used to be a tuple of Region
            return tuple(self) == other
        if not isinstance(other, Regions):
            return NotImplemented
        return tuple(self) == tuple(other)

    __hash__ = None  # type: ignore[assignment]

    # -- views ---------------------------------------------------------------------------------------------
    @property
    def bbox_xyxy(self) -> np.ndarray:
        """``(N, 4) float64`` end-exclusive boxes ``(x0, y0, x1, y1)`` (see :mod:`clipsam.core.boxes`)."""
        b = self.bbox_xywh
        return xywh_to_xyxy(b) if len(b) else np.zeros((0, 4))

    def masks(self, size_hw: tuple[int, int] | None = None) -> np.ndarray:
        """Dense ``(N, H, W) bool`` masks (memory: N*H*W bytes; decode one at a time with ``row(i).mask()``)."""
        if not len(self):
            h, w = size_hw or (0, 0)
            return np.zeros((0, h, w), dtype=bool)
        h, w = self.rles[0]["size"]
        out = np.zeros((len(self), h, w), dtype=bool)
        for i, r in enumerate(self.rles):
            out[i] = M.decode(r)
        return out

    def select(self, **rules: Any) -> Regions:
        """The regions :meth:`select_rows` keeps, parents re-linked."""
        return self.take(self.select_rows(**rules))

    def select_rows(self, *, label: str | None = None, min_score: float = 0.0, min_area: int = 0,
                    kind: str | None = None, labels: Sequence[str] = (), include_unknown: bool | None = None,
                    max_regions: int = 0) -> np.ndarray:
        """Rows kept by the one filter of clipsam (``Segmentation.filter`` and ``clipsam label``'s filters).

        Args:
            label / labels: keep regions whose label path (or label) contains it / one of them (``animal`` keeps
                dogs and cats); unknown regions have no label and are dropped by a label filter.
            min_score: minimum label score.
            min_area: minimum area in pixels.
            kind: keep only this kind.
            include_unknown: ``True`` keeps ``unknown`` / ``unknown part`` regions whatever their score (they have
                none), ``False`` drops them, ``None`` treats them like any region (score 0).
            max_regions: keep at most this many, highest score first, then larger (0: no limit).
        """
        wanted_labels = tuple(labels) + ((label,) if label is not None else ())
        keep = []
        for i in range(len(self)):
            unknown = self.kind[i].startswith("unknown")
            if unknown and include_unknown is False:
                continue
            if wanted_labels and not any(lbl in self.label_path[i] or lbl == self.label[i]
                                         for lbl in wanted_labels):
                continue
            if (self.score[i] < min_score and not (unknown and include_unknown)) or self.area[i] < min_area:
                continue
            if kind is not None and self.kind[i] != kind:
                continue
            keep.append(i)
        if max_regions and len(keep) > max_regions:
            keep = sorted(sorted(keep, key=lambda i: (-self.score[i], -self.area[i], self.ids[i]))[:max_regions])
        return np.asarray(keep, dtype=np.int64)

