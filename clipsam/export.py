"""Exports: COCO dicts from :class:`~clipsam.result.Segmentation`. Pure Python; no torch."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .result import Segmentation

__all__ = ["category_key", "coco_dict"]


def category_key(region: Any) -> str:
    """The category a region counts as: its label path (``animal/dog``), or its label / kind."""
    return region.label_path_str or region.label or region.kind


def coco_dict(seg: Segmentation, *, image_id: int = 1, categories: dict[str, int] | None = None,
              include_unknown: bool = True, file_name: str | None = None) -> dict[str, Any]:
    regions = [r for r in seg.regions if include_unknown or not r.kind.startswith("unknown")]
    if categories is None:
        names = sorted({category_key(r) for r in regions})
        categories = {name: i + 1 for i, name in enumerate(names)}
    cats = []
    for name, cid in sorted(categories.items(), key=lambda kv: kv[1]):
        parts = name.split("/")
        cats.append({"id": int(cid), "name": parts[-1], "supercategory": parts[0] if len(parts) > 1 else "",
                     "label_path": name})
    h, w = seg.image_size
    anns = []
    for r in regions:
        key = category_key(r)
        if key not in categories and r.label in categories:
            key = r.label
        if key not in categories:
            continue
        anns.append({
            "id": r.id + 1,
            "image_id": image_id,
            "category_id": int(categories[key]),
            "segmentation": {"size": list(r.rle["size"]), "counts": r.rle["counts"]},
            "area": int(r.area),
            "bbox": [float(v) for v in r.bbox_xywh],
            "iscrowd": 0,
            "score": round(float(r.score), 6),
            "label_path": list(r.label_path),
            "kind": r.kind,
            "parent_id": None if r.parent_id is None else r.parent_id + 1,
            "predicted_iou": round(float(r.predicted_iou), 6),
        })
    name = file_name or (os.path.basename(seg.image_path) if seg.image_path else f"image_{image_id}")
    return {"images": [{"id": image_id, "file_name": name, "height": int(h), "width": int(w)}],
            "categories": cats, "annotations": anns}
