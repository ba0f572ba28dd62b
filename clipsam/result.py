"""The result type :class:`Segmentation`: all regions of one image (a :class:`~clipsam.regions.Regions` container)
with what produced them, and its exports.

Pure numpy; no torch. Masks are COCO RLE; dense arrays are decoded only on request.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .core.boxes import xywh_to_xyxy_inclusive
from .core.regions import KINDS, Region, Regions
from .errors import OutputError
from .files import atomic_write, marked_image_bytes, same_file

__all__ = ["KINDS", "Region", "Regions", "Segmentation"]


@dataclass(frozen=True)
class Segmentation:
    """All regions found in one image.

    Attributes:
        image_size: ``(H, W)`` of the original image.
        regions: the regions, ordered by id: a :class:`~clipsam.regions.Regions` container (a sequence of
            :class:`Region` rows; a tuple of rows is accepted too).
        image_path: the image's file path when it came from a file.
        query: the text query, if any.
        taxonomy: name of the taxonomy used for labels, if any.
        models: ``{"sam": name, "clip": name}``.
        prompts: for prompted results, the prompts given: ``{"points": [[x, y], …], "labels": [1, 0, …],
            "box": [x0, y0, x1, y1]}`` (keys present when given; original-image pixels). Overlays draw them.
        low_res_logits: for prompted results, ``(N, h, w) float32`` logits of each mask; pass
            ``low_res_logits[i]`` as ``mask=`` to a later ``segment_prompt`` call to refine it.
        embeddings: ``(N, D) float32`` unit CLIP embeddings of the regions' masked crops, when they were computed
            (labelled results, or ``with_embeddings=True``); not part of JSON.
    """

    image_size: tuple[int, int]
    regions: Regions = field(default_factory=Regions.empty)
    image_path: str | None = None
    query: tuple[str, ...] = ()
    taxonomy: str | None = None
    models: dict[str, str] = field(default_factory=dict)
    prompts: dict[str, Any] = field(default_factory=dict)
    low_res_logits: np.ndarray | None = field(default=None, repr=False, compare=False)
    embeddings: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        regions = self.regions
        if not isinstance(regions, Regions):
            regions = Regions.from_rows(tuple(regions))
        if self.embeddings is not None:
            regions = regions.replace(embeddings=self.embeddings)
        object.__setattr__(self, "regions", regions)
        object.__setattr__(self, "embeddings", regions.embeddings)

    # -- container protocol ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.regions)

    def __iter__(self) -> Iterator[Region]:
        return iter(self.regions)

    def __getitem__(self, key: int | slice | Sequence[int] | np.ndarray) -> Any:
        """``seg[i]`` is a :class:`Region`; a slice, index list or boolean array gives a new Segmentation (parents
        re-linked to the nearest kept ancestor)."""
        if isinstance(key, (int, np.integer)):
            return self.regions[int(key)]
        rows = np.arange(len(self.regions))[key] if isinstance(key, slice) else np.asarray(key)
        if rows.dtype == bool:
            if rows.shape != (len(self.regions),):
                raise IndexError(f"boolean index of shape {rows.shape} for {len(self.regions)} regions")
            rows = np.flatnonzero(rows)
        return self._take(rows.astype(np.int64).reshape(-1))

    def _take(self, rows: np.ndarray) -> Segmentation:
        logits = self.low_res_logits
        picked = self.regions.take(rows)
        return replace(self, regions=picked, low_res_logits=None if logits is None else logits[rows],
                       embeddings=picked.embeddings)

    def filter(self, *, label: str | None = None, min_score: float = 0.0, min_area: int = 0,
               kind: str | None = None) -> Segmentation:
        """Regions whose label path contains *label*, with score and area at least the given ones (the same rule
        as ``clipsam label``'s filters: :meth:`clipsam.regions.Regions.select`)."""
        return self._take(self.regions.select_rows(label=label, min_score=min_score, min_area=min_area, kind=kind))

    @property
    def labels(self) -> list[str | None]:
        return [r.label for r in self.regions]

    @property
    def scores(self) -> np.ndarray:
        return self.regions.score.copy()

    @property
    def best(self) -> Region:
        """The highest-scoring region (by label score, then predicted IoU)."""
        if not self.regions:
            raise IndexError("no regions: nothing matched")
        return max(self.regions, key=lambda r: (r.score, r.predicted_iou))

    def masks(self) -> np.ndarray:
        """All masks as a dense ``(N, H, W) bool`` stack (memory: N*H*W bytes)."""
        return self.regions.masks(self.image_size)

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
            **({"prompts": dict(self.prompts)} if self.prompts else {}),
            "regions": [r.to_dict() for r in self.regions],
        }

    def to_json(self, path: str | os.PathLike | None = None, indent: int | None = None) -> str:
        """JSON text of :meth:`to_dict`; also written to *path* when given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            self._check_not_input(path)
            atomic_write(path, text.encode("utf-8"))
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
                   models=dict(d.get("models", {})), prompts=dict(d.get("prompts", {})))

    def to_coco(self, *, image_id: int = 1, taxonomy: Any = None, include_unknown: bool = True,
                file_name: str | None = None) -> dict[str, Any]:
        """A COCO dataset dict: ``images``, ``categories``, ``annotations`` (RLE ``segmentation``).

        Category ids come from *taxonomy* (a :class:`~clipsam.Taxonomy` or name; default the one this result was
        labelled with, when it can be loaded by name), the same ids ``clipsam label`` writes; without a taxonomy
        (a free-text query) they are numbered 1.. by label path. Annotations carry ``score``, ``label_path``,
        ``kind`` and ``parent_id`` (annotation id of the parent) besides the COCO fields; annotation ids are
        ``region.id + 1``.
        """
        from .export import coco_dict

        return coco_dict(self, image_id=image_id, taxonomy=taxonomy, include_unknown=include_unknown,
                         file_name=file_name)

    def overlay(self, image: Any = None, *, alpha: float = 0.5, draw_labels: bool = True) -> Any:
        """The regions drawn over the image (from *image*, or re-read from ``image_path``) as a ``PIL.Image``."""
        from .overlay import render_overlay

        return render_overlay(self, image if image is not None else self.image_path, alpha=alpha,
                              draw_labels=draw_labels)

    def save_overlay(self, path: str | os.PathLike, image: Any = None, *, alpha: float = 0.5,
                     draw_labels: bool = True) -> None:
        """Draw the regions over the image (from *image*, or re-read from ``image_path``) and save as PNG/JPEG (the
        format from the suffix), atomically and marked as clipsam's (``Software`` in PNG text / EXIF). Refuses to
        write over the image the result was made from (:class:`~clipsam.errors.OutputError`)."""
        self._check_not_input(path)
        picture = self.overlay(image, alpha=alpha, draw_labels=draw_labels)
        atomic_write(path, marked_image_bytes(picture, Path(path).suffix))

    def _check_not_input(self, path: str | os.PathLike) -> None:
        if self.image_path is not None and same_file(path, self.image_path):
            raise OutputError(f"{path}: is the image this result was made from; clipsam never writes over its inputs")

    def _repr_png_(self) -> bytes | None:
        """Notebooks show a result made from a file as its overlay."""
        if self.image_path is None or not os.path.isfile(self.image_path):
            return None
        import io

        buf = io.BytesIO()
        self.overlay().save(buf, format="PNG")
        return buf.getvalue()

    def to_supervision(self) -> Any:
        """The regions as ``supervision.Detections`` (supervision is not a dependency: install it to use this).

        Inclusive ``xyxy`` boxes, as ``sv.mask_to_xyxy`` gives them (:mod:`clipsam.core.boxes`), dense ``mask``,
        ``confidence`` (label score), ``class_id`` (:meth:`to_coco`'s category id), and ``data`` with
        ``class_name``, ``label_path``, ``parent_id``, ``kind`` and ``region_id``.
        """
        try:
            import supervision as sv
        except ImportError as exc:
            raise ImportError("to_supervision() needs supervision: pip install supervision") from exc
        coco = self.to_coco()
        by_id = {c["id"]: c for c in coco["categories"]}
        anns = coco["annotations"]
        n = len(self.regions)
        xyxy = xywh_to_xyxy_inclusive(np.asarray([r.bbox_xywh for r in self.regions]).reshape(n, 4)).astype("f4")
        return sv.Detections(
            xyxy=xyxy, mask=self.masks() if n else np.zeros((0, *self.image_size), bool),
            confidence=np.asarray([r.score for r in self.regions], dtype=np.float32),
            class_id=np.asarray([a["category_id"] for a in anns], dtype=int),
            data={"class_name": np.asarray([by_id[a["category_id"]]["name"] for a in anns], dtype=object),
                  "label_path": np.asarray([r.label_path_str for r in self.regions], dtype=object),
                  "parent_id": np.asarray([-1 if r.parent_id is None else r.parent_id for r in self.regions]),
                  "kind": np.asarray([r.kind for r in self.regions], dtype=object),
                  "region_id": np.asarray([r.id for r in self.regions])})

    def to_pandas(self) -> Any:
        """One row per region (``id``, ``label``, ``label_path``, ``score``, ``kind``, ``parent_id`` (Int64: ``<NA>``
        for none), ``area``, ``x``, ``y``, ``w``, ``h``, ``predicted_iou``, ``stability_score``, ``rle``)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from exc
        rows = [{"id": r.id, "label": r.label, "label_path": r.label_path_str, "score": r.score, "kind": r.kind,
                 "parent_id": r.parent_id, "area": r.area, "x": r.bbox_xywh[0], "y": r.bbox_xywh[1],
                 "w": r.bbox_xywh[2], "h": r.bbox_xywh[3], "predicted_iou": r.predicted_iou,
                 "stability_score": r.stability_score, "rle": r.rle} for r in self.regions]
        columns = ["id", "label", "label_path", "score", "kind", "parent_id", "area", "x", "y", "w", "h",
                   "predicted_iou", "stability_score", "rle"]
        return pd.DataFrame(rows, columns=columns).astype({"parent_id": "Int64"})  # no parent: <NA>, not NaN
