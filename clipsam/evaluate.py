"""Evaluate pseudo-labels against ground truth: mask AP (COCOeval), semantic mIoU, per-level accuracy.

Pure numpy + pycocotools; no torch. Predictions are a COCO dataset/results JSON as written by ``clipsam label``
(annotations with ``segmentation`` RLE, ``score`` and ``label_path``). Ground truth is a COCO JSON, or a folder of
VOC-style PNG index masks with a class list.

Categories are matched by name: a prediction counts as the deepest element of its label path that names a ground
truth category (a "puppy" with path animal/dog/puppy counts as "dog" when the ground truth has no puppies).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .core import masks as M
from .errors import ClipsamError
from .export import paint

__all__ = ["EvalReport", "evaluate"]

VOC_IGNORE = 255


@dataclass(frozen=True)
class EvalReport:
    """Results of :func:`evaluate`.

    Attributes:
        mask_ap: COCOeval ``segm`` AP, AP50 and AP75 (``None`` for PNG ground truth, which has no instances).
        miou: mean IoU over the classes present in the ground truth.
        class_iou: IoU per class name.
        level_accuracy: ``{level: accuracy}`` over ground-truth instances whose label path reaches that level; an
            instance is right at level k when its best-matching prediction (IoU >= ``match_iou``) has the same
            first k labels.
        counts: images, ground-truth instances, predictions used, predictions dropped (no matching category).
    """

    mask_ap: dict[str, float] | None
    miou: float
    class_iou: dict[str, float]
    level_accuracy: dict[int, float] = field(default_factory=dict)
    level_counts: dict[int, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"mask_ap": self.mask_ap, "miou": self.miou, "class_iou": self.class_iou,
                "level_accuracy": {str(k): v for k, v in self.level_accuracy.items()},
                "level_counts": {str(k): v for k, v in self.level_counts.items()}, "counts": self.counts}


def _load_json(obj: Any, what: str) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    path = Path(obj)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ClipsamError(f"{path}: no such {what} file") from None
    except ValueError as exc:
        raise ClipsamError(f"{path}: {what} is not valid JSON ({exc})") from None


def _image_key(file_name: str) -> str:
    return Path(file_name).stem


def evaluate(pred: Any, gt: Any, *, classes: Any = None, match_iou: float = 0.5,
             taxonomy: Any = None) -> EvalReport:
    """Compare predictions with ground truth.

    Args:
        pred: ``annotations.json`` of ``clipsam label`` (path or dict).
        gt: a COCO JSON (path or dict), or a folder of VOC-style PNG index masks (then give *classes*).
        classes: for PNG ground truth: a text file with one class name per line (line i = index i), or a list.
        match_iou: IoU at which a prediction matches a ground-truth instance for the level accuracy.
        taxonomy: gives ground-truth categories their label paths when the COCO file has no ``label_path``.
    """
    p = _load_json(pred, "prediction")
    for key in ("images", "annotations"):
        if key not in p:
            raise ClipsamError(f"predictions lack '{key}': give the annotations.json written by clipsam label")
    if isinstance(gt, (str, os.PathLike)) and Path(gt).is_dir():
        return _evaluate_png(p, Path(gt), classes)
    return _evaluate_coco(p, _load_json(gt, "ground truth"), match_iou, taxonomy)


def _pred_category(ann: dict[str, Any], pred_cats: dict[int, dict[str, Any]], names: dict[str, int]) -> int | None:
    path = list(ann.get("label_path") or [])
    if not path:
        cat = pred_cats.get(ann.get("category_id"))
        path = [cat["name"]] if cat else []
    for label in reversed(path):
        if label in names:
            return names[label]
    return None


def _gt_paths(g: dict[str, Any], taxonomy: Any) -> dict[int, tuple[str, ...]]:
    tax = None
    if taxonomy is not None:
        from .core.taxonomy import load_taxonomy

        tax = load_taxonomy(taxonomy)
    out = {}
    for c in g["categories"]:
        if c.get("label_path"):
            out[c["id"]] = tuple(str(c["label_path"]).split("/"))
        elif tax is not None and tax.find(c["name"]):
            out[c["id"]] = tax.find(c["name"])[0].path
        elif c.get("supercategory") and c["supercategory"] != c["name"]:
            out[c["id"]] = (c["supercategory"], c["name"])
        else:
            out[c["id"]] = (c["name"],)
    return out


def _evaluate_coco(p: dict[str, Any], g: dict[str, Any], match_iou: float, taxonomy: Any) -> EvalReport:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    for key in ("images", "annotations", "categories"):
        if key not in g:
            raise ClipsamError(f"ground truth lacks '{key}': give a COCO instances JSON")
    names = {c["name"]: c["id"] for c in g["categories"]}
    cat_name = {c["id"]: c["name"] for c in g["categories"]}
    gt_images = {_image_key(im["file_name"]): im for im in g["images"]}
    pred_images = {im["id"]: im for im in p["images"]}
    pred_cats = {c["id"]: c for c in p.get("categories", [])}

    dts, dropped = [], 0
    for ann in p["annotations"]:
        im = pred_images.get(ann["image_id"])
        gim = gt_images.get(_image_key(im["file_name"])) if im else None
        cid = _pred_category(ann, pred_cats, names)
        if gim is None or cid is None:
            dropped += 1
            continue
        dts.append({"image_id": gim["id"], "category_id": cid, "segmentation": ann["segmentation"],
                    "score": float(ann.get("score", 1.0)), "label_path": ann.get("label_path") or []})

    gt_coco = COCO()
    gt_coco.dataset = json.loads(json.dumps(g))
    with contextlib.redirect_stdout(io.StringIO()):
        gt_coco.createIndex()
        if dts:
            dt_coco = gt_coco.loadRes(json.loads(json.dumps(dts)))
            ev = COCOeval(gt_coco, dt_coco, "segm")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            ap = {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "AP75": float(ev.stats[2])}
        else:
            ap = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}

    # semantic maps per image + level accuracy
    inter: dict[int, int] = {}
    union: dict[int, int] = {}
    gt_paths = _gt_paths(g, taxonomy)
    right: dict[int, int] = {}
    total: dict[int, int] = {}
    n_gt = 0
    for im in g["images"]:
        h, w = int(im["height"]), int(im["width"])
        gts = [a for a in g["annotations"] if a["image_id"] == im["id"] and not a.get("iscrowd", 0)]
        mine = [d for d in dts if d["image_id"] == im["id"]]
        gt_rles = [_ann_rle(a, h, w) for a in gts]
        dt_rles = [d["segmentation"] for d in mine]
        gt_map = _semantic(gt_rles, [a["category_id"] for a in gts], (h, w))
        dt_map = _semantic(dt_rles, [d["category_id"] for d in mine], (h, w))
        for c in set(np.unique(gt_map)) | set(np.unique(dt_map)):
            if c == 0:
                continue
            a, b = gt_map == c, dt_map == c
            inter[c] = inter.get(c, 0) + int((a & b).sum())
            union[c] = union.get(c, 0) + int((a | b).sum())
        iou = M.iou_matrix(gt_rles, dt_rles) if dt_rles else np.zeros((len(gts), 0))
        for k, a in enumerate(gts):
            n_gt += 1
            path = gt_paths[a["category_id"]]
            best = int(iou[k].argmax()) if iou.shape[1] else -1
            pred_path = tuple(mine[best]["label_path"]) if best >= 0 and iou[k, best] >= match_iou else ()
            for level in range(1, len(path) + 1):
                total[level] = total.get(level, 0) + 1
                if pred_path[:level] == path[:level]:
                    right[level] = right.get(level, 0) + 1
    present = {a["category_id"] for a in g["annotations"]}
    class_iou = {cat_name[c]: inter.get(c, 0) / union[c] for c in sorted(present) if union.get(c)}
    miou = float(np.mean(list(class_iou.values()))) if class_iou else 0.0
    return EvalReport(
        mask_ap=ap, miou=miou, class_iou=class_iou,
        level_accuracy={lv: right.get(lv, 0) / total[lv] for lv in sorted(total)},
        level_counts=dict(sorted(total.items())),
        counts={"images": len(g["images"]), "gt_instances": n_gt, "predictions": len(dts), "dropped": dropped},
    )


def _ann_rle(ann: dict[str, Any], h: int, w: int) -> M.RLE:
    from pycocotools import mask as coco_mask

    seg = ann["segmentation"]
    if isinstance(seg, list):  # polygons
        rle = coco_mask.merge(coco_mask.frPyObjects(seg, h, w))
        return {"size": [h, w], "counts": rle["counts"].decode("ascii")}
    if isinstance(seg.get("counts"), list):
        rle = coco_mask.frPyObjects(seg, h, w)
        return {"size": [h, w], "counts": rle["counts"].decode("ascii")}
    return seg


def _semantic(rles: list[M.RLE], cats: list[int], size: tuple[int, int]) -> np.ndarray:
    return paint(rles, cats, size, dtype=np.int64)


def _evaluate_png(p: dict[str, Any], folder: Path, classes: Any) -> EvalReport:
    from PIL import Image

    if classes is None:
        raise ClipsamError("PNG ground truth needs a class list: --classes classes.txt (one name per line)")
    if isinstance(classes, (str, os.PathLike)):
        names = [ln.strip() for ln in Path(classes).read_text().splitlines() if ln.strip()]
    else:
        names = [str(c) for c in classes]
    index = {n: i for i, n in enumerate(names)}
    background = index.get("background", -1)
    pred_cats = {c["id"]: c for c in p.get("categories", [])}
    by_image: dict[str, list[dict[str, Any]]] = {}
    images = {im["id"]: im for im in p["images"]}
    dropped = 0
    for ann in p["annotations"]:
        cls = _pred_category(ann, pred_cats, index)
        if cls is None:
            dropped += 1
            continue
        by_image.setdefault(_image_key(images[ann["image_id"]]["file_name"]), []).append({**ann, "cls": cls})
    inter = np.zeros(len(names), dtype=np.int64)
    union = np.zeros(len(names), dtype=np.int64)
    present = np.zeros(len(names), dtype=bool)
    pngs = sorted(folder.glob("*.png"))
    if not pngs:
        raise ClipsamError(f"{folder}: no PNG masks found")
    for png in pngs:
        gt = np.asarray(Image.open(png)).astype(np.int64)
        anns = by_image.get(png.stem, [])
        pred = _semantic([a["segmentation"] for a in anns], [a["cls"] + 1 for a in anns], gt.shape) - 1
        pred[pred < 0] = background
        valid = gt != VOC_IGNORE
        for c in range(len(names)):
            a, b = (gt == c) & valid, (pred == c) & valid
            present[c] |= bool(a.any())
            inter[c] += int((a & b).sum())
            union[c] += int((a | b).sum())
    class_iou = {names[c]: float(inter[c] / union[c]) for c in range(len(names)) if present[c]}
    return EvalReport(mask_ap=None, miou=float(np.mean(list(class_iou.values()))) if class_iou else 0.0,
                      class_iou=class_iou,
                      counts={"images": len(pngs), "predictions": sum(len(v) for v in by_image.values()),
                              "dropped": dropped})
