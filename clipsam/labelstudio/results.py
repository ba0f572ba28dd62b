"""clipsam's regions as Label Studio results, and Label Studio's clicks and boxes as clipsam prompts.

A region becomes a ``brushlabels`` result (Label Studio's brush RLE, :mod:`clipsam.core.lsrle`) or, for a polygon
project, one ``polygonlabels`` result per outer ring (percent coordinates); its label is the project label of its
label path (:meth:`LabelConfig.label_for`); regions whose path names no project label are left out. The hierarchy
travels as ``relation`` results from each part (kind ``part`` / ``unknown part``) to its nearest region that was
kept, labelled ``part of`` when the
project offers that relation, and the label path as the per-region text area's text and/or the per-region
taxonomy's choice (its longest start the tree offers). Pure numpy; no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core import lsrle
from ..core import masks as M
from ..core.polygons import mask_rings
from ..errors import PromptError
from ..result import Region, Segmentation
from .config import PART_OF, LabelConfig

__all__ = ["context_prompts", "prediction", "region_results"]

#: the kinds of region that are part of their parent (an object on another object, a cat on a sofa, is not)
PART_KINDS = ("part", "unknown part")
#: polygon rings smaller than this many pixels are left out of polygon results (specks)
MIN_RING_AREA = 4.0


def result_id(region: Region, piece: int = 0) -> str:
    """A region's result id: stable per region (``cs12``; ``cs12-1`` for a second polygon ring)."""
    return f"cs{region.id}" + (f"-{piece}" if piece else "")


def _shapes(region: Region, cfg: LabelConfig, label: str, size: tuple[int, int]) -> list[dict[str, Any]]:
    h, w = size
    common = {"from_name": cfg.regions, "to_name": cfg.image, "original_width": w, "original_height": h,
              "image_rotation": 0, "score": round(float(region.score), 6)}
    if cfg.shape == "brush":
        value = {"format": "rle", "rle": lsrle.encode(M.decode(region.rle)), "brushlabels": [label]}
        return [{"id": result_id(region), "type": "brushlabels", "value": value, **common}]
    out = []
    rings = [xy for xy, hole in mask_rings(region.rle) if not hole]
    for k, xy in enumerate(xy for xy in rings if len(xy) >= 3 and _area(xy) >= MIN_RING_AREA):
        points = [[round(float(x) * 100.0 / w, 4), round(float(y) * 100.0 / h, 4)] for x, y in xy]
        value = {"points": points, "closed": True, "polygonlabels": [label]}
        out.append({"id": result_id(region, k), "type": "polygonlabels", "value": value, **common})
    return out


def _area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)))


def region_results(seg: Segmentation, cfg: LabelConfig) -> list[dict[str, Any]]:
    """Every region of *seg* whose label the project has, as Label Studio results: shapes, per-region label paths,
    and ``part of`` relations from each part to its nearest kept ancestor (objects inside objects get none)."""
    shapes: list[dict[str, Any]] = []
    extra: list[dict[str, Any]] = []
    kept: dict[int, list[str]] = {}  # region id -> its result ids
    by_id = {r.id: r for r in seg.regions}
    for r in seg.regions:
        label = cfg.label_for(r.label, r.label_path, r.kind)
        if label is None:
            continue
        pieces = _shapes(r, cfg, label, seg.image_size)
        if not pieces:
            continue
        kept[r.id] = [p["id"] for p in pieces]
        shapes.extend(pieces)
        if cfg.path is not None and r.label_path:
            for p in pieces:  # same id as the shape: Label Studio attaches per-region results by id
                extra.append({"id": p["id"], "from_name": cfg.path, "to_name": cfg.image, "type": "textarea",
                              "value": {"text": [r.label_path_str]}})
        tree_path = cfg.tree_path(r.label_path) if cfg.tree is not None else None
        if tree_path is not None:
            for p in pieces:
                extra.append({"id": p["id"], "from_name": cfg.tree, "to_name": cfg.image, "type": "taxonomy",
                              "value": {"taxonomy": [tree_path]}})
    if cfg.has_relations:
        labels = [PART_OF] if PART_OF in cfg.relations else []
        for rid, ids in kept.items():
            parent = _kept_ancestor(by_id[rid], by_id, kept) if by_id[rid].kind in PART_KINDS else None
            if parent is None:
                continue
            for own in ids:
                extra.append({"type": "relation", "from_id": own, "to_id": kept[parent][0], "direction": "right",
                              **({"labels": labels} if labels else {})})
    return shapes + extra


def _kept_ancestor(region: Region, by_id: dict[int, Region], kept: dict[int, list[str]]) -> int | None:
    pid = region.parent_id
    while pid is not None and pid not in kept:
        pid = by_id[pid].parent_id if pid in by_id else None
    return pid


def prediction(seg: Segmentation, cfg: LabelConfig, model_version: str) -> dict[str, Any]:
    """One Label Studio prediction for an image: its results, and as ``score`` the mean score of its regions (0 when
    none), which the Data Manager sorts tasks by."""
    results = region_results(seg, cfg)
    scores = [r["score"] for r in results if "score" in r]
    return {"result": results, "score": float(np.mean(scores)) if scores else 0.0, "model_version": model_version}


def context_prompts(context: dict[str, Any] | None, size: tuple[int, int]) -> tuple[Any, Any, Any, str | None]:
    """The smart tools' clicks and box in a Label Studio ``context`` -> ``(points (N, 2) px | None, labels (N,) |
    None, box (4,) px | None, the label the annotator chose | None)`` for an ``(H, W)`` image.

    Keypoints are clicks (``is_positive`` false: a negative click); the last rectangle is the box. Coordinates
    arrive in percent of the image.
    """
    h, w = size
    items = (context or {}).get("result") or []
    if not isinstance(items, Sequence):
        raise PromptError("the Label Studio context's result must be a list of keypoints and rectangles")
    points, labels, box, chosen = [], [], None, None
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            continue
        v, kind = item["value"], str(item.get("type", "")).lower()
        try:
            if kind.startswith("keypoint"):
                points.append([float(v["x"]) * w / 100.0, float(v["y"]) * h / 100.0])
                labels.append(0 if item.get("is_positive") is False else 1)
            elif kind.startswith("rectangle"):
                x, y = float(v["x"]) * w / 100.0, float(v["y"]) * h / 100.0
                box = [x, y, x + float(v["width"]) * w / 100.0, y + float(v["height"]) * h / 100.0]
            else:
                continue
        except (KeyError, TypeError, ValueError):
            raise PromptError(f"a Label Studio {kind} in the context has no numeric x/y (width/height)") from None
        names = next((v[k] for k in ("keypointlabels", "rectanglelabels", "labels") if v.get(k)), None)
        if names and chosen is None and item.get("is_positive") is not False:
            chosen = str(names[0])
    if not points and box is None:
        raise PromptError("the Label Studio context holds no keypoint or rectangle to prompt SAM with")
    return (np.asarray(points, float) if points else None, np.asarray(labels, int) if labels else None,
            np.asarray(box, float) if box is not None else None, chosen)
