"""Result types: :class:`Region` (one mask and its labels) and :class:`Segmentation` (all regions of an image).

Pure numpy; no torch. Masks are COCO RLE; dense arrays are decoded only on request.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from . import masks as M
from ._version import __version__

#: ``Region.kind`` values.
KINDS = ("object", "part", "unknown", "unknown part", "prompt")

__all__ = ["KINDS", "Region", "Segmentation"]


@dataclass(frozen=True)
class Region:
    """One segmented region.

    Attributes:
        id: stable id within its :class:`Segmentation` (canonical order: larger regions first).
        rle: the mask, COCO RLE at the image's original size.
        bbox_xywh: tight box ``(x, y, w, h)`` in original-image pixels.
        area: mask area in pixels.
        label: the deepest accepted label (``dog``), ``unknown`` / ``unknown part``, or ``None`` (not labelled).
        score: confidence of that label in [0, 1] (0 when not labelled).
        label_path: labels from the top level down (``("animal", "dog", "puppy")``).
        path_scores: confidence of each level of *label_path*.
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
        x, y, w, h = self.bbox_xywh
        return (x, y, x + w, y + h)

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


@dataclass(frozen=True)
class Segmentation:
    """All regions found in one image.

    Attributes:
        image_size: ``(H, W)`` of the original image.
        regions: the regions, ordered by id.
        image_path: the image's file path when it came from a file.
        query: the text query, if any.
        taxonomy: name of the taxonomy used for labels, if any.
        models: ``{"sam": name, "clip": name}``.
        low_res_logits: for prompted results, ``(N, h, w) float32`` logits of each mask; pass
            ``low_res_logits[i]`` as ``mask=`` to a later ``segment_prompt`` call to refine it.
        embeddings: ``(N, D) float32`` unit CLIP embeddings of the regions' masked crops, when they were computed
            (labelled results, or ``with_embeddings=True``); not part of JSON.
    """

    image_size: tuple[int, int]
    regions: tuple[Region, ...] = ()
    image_path: str | None = None
    query: tuple[str, ...] = ()
    taxonomy: str | None = None
    models: dict[str, str] = field(default_factory=dict)
    low_res_logits: np.ndarray | None = field(default=None, repr=False, compare=False)
    embeddings: np.ndarray | None = field(default=None, repr=False, compare=False)

    # -- container protocol ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.regions)

    def __iter__(self) -> Iterator[Region]:
        return iter(self.regions)

    def __getitem__(self, key: int | slice | Sequence[int] | np.ndarray) -> Any:
        """``seg[i]`` is a :class:`Region`; a slice, index list or boolean array gives a new Segmentation."""
        if isinstance(key, (int, np.integer)):
            return self.regions[int(key)]
        if isinstance(key, slice):
            picked = self.regions[key]
        else:
            arr = np.asarray(key)
            if arr.dtype == bool:
                if arr.shape != (len(self.regions),):
                    raise IndexError(f"boolean index of shape {arr.shape} for {len(self.regions)} regions")
                arr = np.flatnonzero(arr)
            picked = tuple(self.regions[int(i)] for i in arr)
        return self._subset(picked)

    def _subset(self, picked: Sequence[Region]) -> Segmentation:
        index = {r.id: i for i, r in enumerate(self.regions)}
        rows = [index[r.id] for r in picked]
        logits, emb = self.low_res_logits, self.embeddings
        return replace(self, regions=tuple(picked), low_res_logits=None if logits is None else logits[rows],
                       embeddings=None if emb is None else emb[rows])

    def filter(self, *, label: str | None = None, min_score: float = 0.0, min_area: int = 0,
               kind: str | None = None) -> Segmentation:
        """Regions whose label path contains *label*, with score and area at least the given ones."""
        picked = [r for r in self.regions
                  if (label is None or label in r.label_path or r.label == label)
                  and r.score >= min_score and r.area >= min_area and (kind is None or r.kind == kind)]
        return self._subset(picked)

    @property
    def labels(self) -> list[str | None]:
        return [r.label for r in self.regions]

    @property
    def scores(self) -> np.ndarray:
        return np.asarray([r.score for r in self.regions], dtype=np.float64)

    @property
    def best(self) -> Region:
        """The highest-scoring region (by label score, then predicted IoU)."""
        if not self.regions:
            raise IndexError("no regions: nothing matched")
        return max(self.regions, key=lambda r: (r.score, r.predicted_iou))

    def masks(self) -> np.ndarray:
        """All masks as a dense ``(N, H, W) bool`` stack (memory: N*H*W bytes)."""
        h, w = self.image_size
        out = np.zeros((len(self.regions), h, w), dtype=bool)
        for i, r in enumerate(self.regions):
            out[i] = M.decode(r.rle)
        return out

    # -- tree --------------------------------------------------------------------------------------------
    def children(self, region_id: int | None) -> list[Region]:
        """Regions whose parent is *region_id* (``None``: the roots)."""
        return [r for r in self.regions if r.parent_id == region_id]

    @property
    def tree(self) -> dict[int | None, list[int]]:
        """``{parent id (None for roots): [child ids]}``."""
        out: dict[int | None, list[int]] = {}
        for r in self.regions:
            out.setdefault(r.parent_id, []).append(r.id)
        return out

    def format_tree(self, max_depth: int | None = None) -> str:
        """The labelled part-whole tree as text, e.g. ``dog 0.91 [animal/dog]`` / ``└─ head 0.80 [part]``."""
        lines: list[str] = []
        by_id = {r.id: r for r in self.regions}
        kids = self.tree

        def line(r: Region) -> str:
            label = r.label or "(unlabelled)"
            tag = r.kind if r.kind in ("part", "unknown", "unknown part") else r.label_path_str or r.kind
            return f"{label} {r.score:.2f} [{tag}] #{r.id} area={r.area}"

        def walk(rid: int, prefix: str, last: bool, depth: int) -> None:
            lines.append(f"{prefix}{'└─ ' if last else '├─ '}{line(by_id[rid])}")
            if max_depth is not None and depth >= max_depth:
                return
            sub = kids.get(rid, [])
            for k, cid in enumerate(sub):
                walk(cid, prefix + ("   " if last else "│  "), k == len(sub) - 1, depth + 1)

        for rid in kids.get(None, []):
            lines.append(line(by_id[rid]))
            sub = kids.get(rid, [])
            if max_depth is None or max_depth > 0:
                for k, cid in enumerate(sub):
                    walk(cid, "", k == len(sub) - 1, 1)
        return "\n".join(lines)

    def print_tree(self, max_depth: int | None = None) -> None:
        """Print :meth:`format_tree` (a convenience for notebooks; the library itself never prints)."""
        print(self.format_tree(max_depth))  # noqa: T201

    # -- exports -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "clipsam_version": __version__,
            "image_path": self.image_path,
            "image_size": list(self.image_size),
            "query": list(self.query),
            "taxonomy": self.taxonomy,
            "models": dict(self.models),
            "regions": [r.to_dict() for r in self.regions],
        }

    def to_json(self, path: str | os.PathLike | None = None, indent: int | None = None) -> str:
        """JSON text of :meth:`to_dict`; also written to *path* when given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> Segmentation:
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            with open(text_or_path, encoding="utf-8") as fh:
                text = fh.read()
        d = json.loads(text)
        return cls(image_size=tuple(d["image_size"]), regions=tuple(Region.from_dict(r) for r in d["regions"]),
                   image_path=d.get("image_path"), query=tuple(d.get("query", ())), taxonomy=d.get("taxonomy"),
                   models=dict(d.get("models", {})))

    def to_coco(self, *, image_id: int = 1, categories: dict[str, int] | None = None, include_unknown: bool = True,
                file_name: str | None = None) -> dict[str, Any]:
        """A COCO results/dataset dict: ``images``, ``categories``, ``annotations`` (RLE ``segmentation``).

        Category ids come from *categories* (``{label path or label: id}``) or are numbered 1.. by label path.
        Annotations carry ``score``, ``label_path`` and ``parent_id`` (annotation id of the parent) besides the
        COCO fields. Annotation ids are ``region.id + 1``.
        """
        from .export import coco_dict

        return coco_dict(self, image_id=image_id, categories=categories, include_unknown=include_unknown,
                         file_name=file_name)

    def save_overlay(self, path: str | os.PathLike, image: Any = None, *, alpha: float = 0.5,
                     draw_labels: bool = True) -> None:
        """Draw the regions over the image (from *image*, or re-read from ``image_path``) and save as PNG/JPEG."""
        from .overlay import render_overlay

        render_overlay(self, image if image is not None else self.image_path, alpha=alpha,
                       draw_labels=draw_labels).save(path)
