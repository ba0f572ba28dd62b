"""Exports: the one place that builds COCO categories and annotations, and the one semantic / instance painter.

``Segmentation.to_coco``, ``clipsam label`` (``OUT/annotations.json``) and ``clipsam eval`` all go through here.
Category ids come from the taxonomy (its order, ``1..``; then ``unknown``, ``unknown part``), so they are the same
for every image and every run. Pure numpy; no torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .core import masks as M

if TYPE_CHECKING:
    from .core.regions import Region
    from .core.taxonomy import Taxonomy
    from .result import Segmentation

__all__ = ["UNKNOWN_KEYS", "annotation", "annotations", "categories_of_paths", "category_key", "category_table",
           "coco_dict", "paint"]

#: Categories of regions no label matched (``--unknown``).
UNKNOWN_KEYS = ("unknown", "unknown part")


def category_key(region: Region) -> str:
    """The category a region counts as: its label path (``animal/dog``), or its kind (``unknown``, ``prompt``)."""
    return region.label_path_str or region.kind


def category_table(taxonomy: Taxonomy, include_unknown: bool = False) -> list[dict[str, Any]]:
    """COCO categories for every label of *taxonomy* (objects and parts), ids 1.. in taxonomy order."""
    cats = [{"id": k + 1, "name": n.name, "supercategory": n.path[0] if n.depth > 1 else "",
             "label_path": n.path_str, "is_part": n.is_part} for k, n in enumerate(taxonomy)]
    if include_unknown:
        for key in UNKNOWN_KEYS:
            cats.append({"id": len(cats) + 1, "name": key, "supercategory": "", "label_path": key,
                         "is_part": key == "unknown part"})
    return cats


def categories_of_paths(keys: Sequence[str]) -> list[dict[str, Any]]:
    """Categories when no taxonomy is known (a free-text query): one per distinct key, ids 1.. by sorted key."""
    cats = []
    for k, key in enumerate(sorted(set(keys))):
        parts = key.split("/")
        cats.append({"id": k + 1, "name": parts[-1], "supercategory": parts[0] if len(parts) > 1 else "",
                     "label_path": key, "is_part": key == "unknown part"})
    return cats


def annotation(region: Region, ann_id: int, image_id: int, category_id: int, parent_ann_id: int | None) -> dict:
    """One COCO annotation (RLE ``segmentation``, ``bbox`` xywh) with clipsam's extra fields."""
    return {
        "id": int(ann_id), "image_id": image_id, "category_id": int(category_id),
        "segmentation": {"size": list(region.rle["size"]), "counts": region.rle["counts"]},
        "area": int(region.area), "bbox": [float(v) for v in region.bbox_xywh], "iscrowd": 0,
        "score": float(region.score), "label_path": list(region.label_path), "kind": region.kind,
        "parent_id": parent_ann_id, "predicted_iou": float(region.predicted_iou),
    }


def annotations(regions: Sequence[Region], image_id: int, cat_ids: dict[str, int], first_id: int | None = None
                ) -> list[dict]:
    """Annotations of one image's *regions*, parents as annotation ids; ids ``first_id, first_id + 1, …`` (a
    dataset), or ``region.id + 1`` when *first_id* is ``None`` (one image). Regions whose category is not in
    *cat_ids* get category 0."""
    local = {r.id: (r.id + 1 if first_id is None else first_id + k) for k, r in enumerate(regions)}
    return [annotation(r, local[r.id], image_id, cat_ids.get(category_key(r), 0),
                       local.get(r.parent_id) if r.parent_id is not None else None) for r in regions]


def coco_dict(seg: Segmentation, *, image_id: int = 1, taxonomy: Taxonomy | str | None = None,
              include_unknown: bool = True, file_name: str | None = None) -> dict[str, Any]:
    """A COCO dataset dict of one :class:`~clipsam.Segmentation`: ``images``, ``categories``, ``annotations``.

    Categories come from *taxonomy* (or the segmentation's own, when it can be loaded by name), with the same ids
    as ``clipsam label``; without one, from the regions' label paths sorted.
    """
    from .core.taxonomy import find_taxonomy, load_taxonomy

    regions = [r for r in seg.regions if include_unknown or not r.kind.startswith("unknown")]
    tax = taxonomy if taxonomy is not None else find_taxonomy(seg.taxonomy)
    if tax is not None:
        cats = category_table(load_taxonomy(tax), include_unknown)
        known = {c["label_path"] for c in cats}
        extra = sorted({category_key(r) for r in regions} - known)  # e.g. prompt regions
        cats += [{**c, "id": len(cats) + k + 1} for k, c in enumerate(categories_of_paths(extra))]
    else:
        cats = categories_of_paths([category_key(r) for r in regions])
    cat_ids = {c["label_path"]: c["id"] for c in cats}
    h, w = seg.image_size
    name = file_name or (os.path.basename(seg.image_path) if seg.image_path else f"image_{image_id}")
    return {"images": [{"id": image_id, "file_name": name, "height": int(h), "width": int(w)}],
            "categories": cats, "annotations": annotations(regions, image_id, cat_ids)}


def paint(rles: Sequence[M.RLE], values: Sequence[int], size: tuple[int, int], dtype: Any = np.uint16) -> np.ndarray:
    """An ``(H, W)`` map with ``values[i]`` wherever mask *i* is, smaller masks painted over larger ones
    (0 elsewhere): the semantic (category ids) and instance (annotation indices) PNGs, and ``eval``'s mIoU maps."""
    out = np.zeros(size, dtype=dtype)
    if not len(rles):
        return out
    areas = M.area(list(rles))
    for i in sorted(range(len(rles)), key=lambda i: -int(areas[i])):
        out[M.decode(rles[i])] = values[i]
    return out
