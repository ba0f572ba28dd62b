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
           "coco_dict", "coco_info", "paint", "path_tuple", "unique_names"]

#: Categories of regions no label matched (``--unknown``).
UNKNOWN_KEYS = ("unknown", "unknown part")


def category_key(region: Region) -> str:
    """The category a region counts as: its label path (``animal/dog``), or its kind (``unknown``, ``prompt``)."""
    return region.label_path_str or region.kind


def path_tuple(value: Any) -> tuple[str, ...]:
    """A label path from a COCO file: ``"animal/dog"`` (what clipsam writes, in categories and annotations alike)
    or a list (older clipsam files had lists in annotations); ``""`` / ``None`` is no path."""
    if not value:
        return ()
    if isinstance(value, str):
        return tuple(p for p in value.split("/") if p)
    return tuple(str(p) for p in value)


def unique_names(paths: Sequence[Sequence[str]]) -> list[str]:
    """A name per label path, unique among *paths*: the shortest ending of the path that no other path shares
    (``head`` when only one label is called head, else ``dog/head``, ``cat/head``; the whole path at worst).
    COCO tools key categories by name (Datumaro refuses repeats, supervision and FiftyOne merge them)."""
    tuples = [tuple(p) for p in paths]
    counts: dict[tuple[str, ...], int] = {}
    for p in tuples:
        for k in range(1, len(p) + 1):
            counts[p[-k:]] = counts.get(p[-k:], 0) + 1
    return ["/".join(next((p[-k:] for k in range(1, len(p) + 1) if counts[p[-k:]] == 1), p)) for p in tuples]


def _categories(paths: Sequence[tuple[str, ...]], is_part: Sequence[bool]) -> list[dict[str, Any]]:
    """Categories 1.. for *paths*: unique ``name``, ``supercategory`` the direct parent by its ``name`` in this file
    (``dog/head`` for an ear, so that Datumaro and CVAT, which make it the label's parent, find it; a top-level label
    is its own, as in COCO's ``person``; a parent not in the file keeps its last word), ``label_path`` the path as a
    string."""
    names = unique_names(paths)
    named = dict(zip(paths, names, strict=True))
    return [{"id": k + 1, "name": name, "supercategory": named.get(p[:-1], p[-2]) if len(p) > 1 else p[0],
             "label_path": "/".join(p), "is_part": bool(part)}
            for k, (p, name, part) in enumerate(zip(paths, names, is_part, strict=True))]


def category_table(taxonomy: Taxonomy, include_unknown: bool = False) -> list[dict[str, Any]]:
    """COCO categories for every label of *taxonomy* (objects and parts), ids 1.. in taxonomy order, then
    ``unknown`` and ``unknown part`` with *include_unknown*."""
    nodes = list(taxonomy)
    paths = [n.path for n in nodes] + ([(k,) for k in UNKNOWN_KEYS] if include_unknown else [])
    parts = [n.is_part for n in nodes] + ([k == "unknown part" for k in UNKNOWN_KEYS] if include_unknown else [])
    return _categories(paths, parts)


def categories_of_paths(keys: Sequence[str]) -> list[dict[str, Any]]:
    """Categories when no taxonomy is known (a free-text query): one per distinct key, ids 1.. by sorted key."""
    keys = sorted(set(keys))
    return _categories([tuple(k.split("/")) for k in keys], [k == "unknown part" for k in keys])


def coco_info(description: str = "clipsam segmentation") -> dict[str, Any]:
    """COCO's ``info`` block (pycocotools' ``COCO.info()`` and Datumaro read it). ``date_created`` is a date, not
    a time, taken from ``SOURCE_DATE_EPOCH`` when set (reproducible files), so reruns on one day give identical
    bytes."""
    import datetime

    from ._version import __version__

    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    day = (datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch.isdigit()
           else datetime.datetime.now(datetime.timezone.utc)).date()
    return {"description": description, "version": __version__, "year": day.year,
            "date_created": day.isoformat(), "url": "https://github.com/clipsam/clipsam", "contributor": "clipsam"}


def annotation(region: Region, ann_id: int, image_id: int, category_id: int, parent_ann_id: int | None) -> dict:
    """One COCO annotation (RLE ``segmentation``, ``bbox`` xywh) with clipsam's extra fields: ``score``,
    ``label_path`` (a string like the categories' ``"animal/dog/head"``; ``""`` for unknown), ``kind``,
    ``parent_id`` (the parent's annotation id) and ``predicted_iou``."""
    return {
        "id": int(ann_id), "image_id": image_id, "category_id": int(category_id),
        "segmentation": {"size": list(region.rle["size"]), "counts": region.rle["counts"]},
        "area": int(region.area), "bbox": [float(v) for v in region.bbox_xywh], "iscrowd": 0,
        "score": float(region.score), "label_path": region.label_path_str, "kind": region.kind,
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

    # the one filter of clipsam: dropping unknown regions re-links each kept region to its nearest kept ancestor
    # (an ear under an unknown part keeps the dog as its parent), as clipsam label does
    regions = list(seg.regions if include_unknown else seg.regions.select(include_unknown=False))
    tax = taxonomy if taxonomy is not None else find_taxonomy(seg.taxonomy)
    if tax is not None:
        cats = category_table(load_taxonomy(tax), include_unknown)
        known = {c["label_path"] for c in cats}
        extra = sorted({category_key(r) for r in regions} - known)  # e.g. prompt regions
        cats = _categories([tuple(c["label_path"].split("/")) for c in cats] + [tuple(e.split("/")) for e in extra],
                           [c["is_part"] for c in cats] + [e == "unknown part" for e in extra])
    else:
        cats = categories_of_paths([category_key(r) for r in regions])
    cat_ids = {c["label_path"]: c["id"] for c in cats}
    h, w = seg.image_size
    name = file_name or (os.path.basename(seg.image_path) if seg.image_path else f"image_{image_id}")
    return {"info": coco_info(), "licenses": [],
            "images": [{"id": image_id, "file_name": name, "height": int(h), "width": int(w)}],
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
