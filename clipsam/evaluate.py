"""Evaluate pseudo-labels against ground truth: mask AP (COCOeval), semantic mIoU, per-level accuracy.

Pure numpy + pycocotools; no torch. Predictions are a COCO dataset/results JSON as written by ``clipsam label``
(annotations with ``segmentation`` RLE, ``score`` and ``label_path``). Ground truth is a COCO JSON, or a folder of
VOC-style PNG index masks with a class list.

Categories are matched by label path when the ground truth has paths (``label_path`` in its categories, or a
``taxonomy`` that names them): a prediction counts as the deepest prefix of its path that is a ground-truth category
(animal/dog/puppy counts as animal/dog when the ground truth has no puppies). Without paths they are matched by name,
with a warning when ground-truth names repeat. A part (``animal/dog/head``) only ever counts as a ground-truth *part*
category; where the ground truth has none it is ignored (reported as ``parts_ignored``), never counted as a second
dog. Regions no label matched count as the ground truth's ``unknown`` / ``unknown part`` categories when it has them.
Images are matched by relative path (``file_name``), by file stem only where that is unambiguous on both sides. Crowd
regions (``iscrowd: 1``) are ignored: by COCOeval for AP, and as ignored pixels for the semantic IoU.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .core import masks as M
from .errors import ClipsamError
from .export import paint, path_tuple
from .files import read_text_capped

log = logging.getLogger(__name__)

__all__ = ["SCORE_BINS", "EvalReport", "evaluate", "reliability_table"]

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
        counts: images, ground-truth instances (crowd excluded), predictions used, predictions dropped (no
            matching image or category), parts ignored (no part category in the ground truth), predictions lying
            mostly outside every ground-truth instance (``on_background``).
        label_precision: over every labelled prediction used (not only the best per instance): the share whose
            label fits the ground-truth instance under most of its pixels -- that instance's label or an ancestor of
            it (a part: the very part); a prediction lying mostly outside every instance is wrong. ``None`` without
            instances.
        reliability: within score bins (``[0, 0.3)`` … ``[0.9, 1]``), how many labelled predictions and the share
            that is right: how far a score can be trusted.
        warnings: what made the matching uncertain (repeated names without label paths).
    """

    mask_ap: dict[str, float] | None
    miou: float
    class_iou: dict[str, float]
    level_accuracy: dict[int, float] = field(default_factory=dict)
    level_counts: dict[int, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    label_precision: float | None = None
    reliability: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"mask_ap": self.mask_ap, "miou": self.miou, "class_iou": self.class_iou,
                "level_accuracy": {str(k): v for k, v in self.level_accuracy.items()},
                "level_counts": {str(k): v for k, v in self.level_counts.items()}, "counts": self.counts,
                "label_precision": self.label_precision, "reliability": list(self.reliability),
                "warnings": list(self.warnings)}


def _load_json(obj: Any, what: str) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    path = Path(obj)
    try:
        return json.loads(read_text_capped(path, "COCO JSON"))
    except FileNotFoundError:
        raise ClipsamError(f"{path}: no such {what} file") from None
    except ValueError as exc:
        raise ClipsamError(f"{path}: {what} is not valid JSON ({exc})") from None


def _image_matcher(gt_images: list[dict[str, Any]]) -> Any:
    """``file_name -> ground-truth image``: by relative path, else by stem where the stem is unique in the ground
    truth (``a/001.jpg`` and ``b/001.jpg`` never collide)."""
    by_path = {Path(im["file_name"]).as_posix(): im for im in gt_images}
    stems: dict[str, list[dict[str, Any]]] = {}
    for im in gt_images:
        stems.setdefault(Path(im["file_name"]).stem, []).append(im)

    def match(file_name: str) -> dict[str, Any] | None:
        exact = by_path.get(Path(file_name).as_posix())
        if exact is not None:
            return exact
        same = stems.get(Path(file_name).stem, [])
        return same[0] if len(same) == 1 else None

    return match


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


@dataclass(frozen=True)
class _Categories:
    """Ground-truth categories and how a prediction finds its one."""

    paths: dict[int, tuple[str, ...]]  # id -> label path (from the file, a taxonomy, or supercategory/name)
    parts: frozenset[int]  # ids of part categories
    by_path: dict[tuple[str, ...], int] | None  # None: match by name
    by_name: dict[str, int]
    display: dict[int, str]  # the name when unique, else the path
    warnings: tuple[str, ...] = ()

    def match(self, ann: dict[str, Any], pred_cats: dict[Any, dict[str, Any]]) -> tuple[int | None, bool]:
        """(ground-truth category id or None, is the prediction a part)."""
        path = path_tuple(ann.get("label_path"))
        kind = ann.get("kind") or ""
        if not path:
            cat = pred_cats.get(ann.get("category_id"))
            path = path_tuple(cat.get("label_path") or cat["name"]) if cat else ()
        if not path and kind:
            path = (kind,)  # unknown / unknown part
        is_part = kind in ("part", "unknown part") or bool((pred_cats.get(ann.get("category_id")) or {}).get("is_part"))
        for k in range(len(path), 0, -1):
            prefix = path[:k]
            cid = self.by_path.get(prefix) if self.by_path is not None else self.by_name.get(prefix[-1])
            if cid is None:
                continue
            if k == len(path):
                return cid, is_part  # the very category
            if is_part and cid not in self.parts:
                break  # a part never counts as its whole (a dog's head is not a second dog)
            if not is_part and cid in self.parts:
                continue
            return cid, is_part
        return None, is_part


def _categories(g: dict[str, Any], taxonomy: Any) -> _Categories:
    tax = None
    if taxonomy is not None:
        from .core.taxonomy import load_taxonomy

        tax = load_taxonomy(taxonomy)
    paths, parts, explicit = {}, set(), True
    for c in g["categories"]:
        if c.get("label_path"):
            paths[c["id"]] = path_tuple(c["label_path"])
        elif tax is not None and tax.find(c["name"]):
            paths[c["id"]] = tax.find(c["name"])[0].path
        else:
            explicit = False
            sup = c.get("supercategory")
            paths[c["id"]] = (sup, c["name"]) if sup and sup != c["name"] else (c["name"],)
        node = tax.find("/".join(paths[c["id"]])) if tax is not None else []
        if c.get("is_part") or c.get("label_path") == "unknown part" or (node and node[0].is_part):
            parts.add(c["id"])
    names: dict[str, list[int]] = {}
    for c in g["categories"]:
        names.setdefault(c["name"], []).append(c["id"])
    repeated = sorted(n for n, ids in names.items() if len(ids) > 1)
    warnings = ()
    if not explicit and repeated:
        warnings = (f"ground-truth category names repeat ({', '.join(repeated[:5])}) and it has no label paths: "
                    "categories are matched by name, the first of each wins; give --taxonomy or label_path",)
    display = {c["id"]: c["name"] if len(names[c["name"]]) == 1 else "/".join(paths[c["id"]]) for c in g["categories"]}
    return _Categories(paths=paths, parts=frozenset(parts), by_path={v: k for k, v in paths.items()} if explicit
                       else None, by_name={n: ids[0] for n, ids in names.items()}, display=display, warnings=warnings)


def _evaluate_coco(p: dict[str, Any], g: dict[str, Any], match_iou: float, taxonomy: Any) -> EvalReport:
    for key in ("images", "annotations", "categories"):
        if key not in g:
            raise ClipsamError(f"ground truth lacks '{key}': give a COCO instances JSON")
    cats = _categories(g, taxonomy)
    for warning in cats.warnings:
        log.warning("%s", warning)
    dts, counts = _matched_predictions(p, g, cats)
    _check_sizes(g["images"], dts)
    ap = _coco_ap(g, dts)
    inter: dict[int, int] = {}
    union: dict[int, int] = {}
    right: dict[int, int] = {}
    total: dict[int, int] = {}
    judged: list[tuple[float, bool]] = []  # (score, right) of every labelled prediction
    for im in g["images"]:
        h, w = int(im["height"]), int(im["width"])
        anns = [a for a in g["annotations"] if a["image_id"] == im["id"]]
        gts = [a for a in anns if not a.get("iscrowd", 0)]
        mine = [d for d in dts if d["image_id"] == im["id"]]
        gt_rles = [_ann_rle(a, h, w) for a in gts]
        dt_rles = [d["segmentation"] for d in mine]
        crowd = paint([_ann_rle(a, h, w) for a in anns if a.get("iscrowd", 0)],
                      [1] * sum(1 for a in anns if a.get("iscrowd", 0)), (h, w), dtype=np.uint8) > 0
        _accumulate_iou(_semantic(gt_rles, [a["category_id"] for a in gts], (h, w)),
                        _semantic(dt_rles, [d["category_id"] for d in mine], (h, w)), ~crowd, inter, union)
        judged += _judge_predictions(mine, dt_rles, gts, gt_rles, cats)
        iou = M.iou_matrix(gt_rles, dt_rles) if dt_rles else np.zeros((len(gts), 0))
        for k, a in enumerate(gts):
            path = cats.paths[a["category_id"]]
            best = int(iou[k].argmax()) if iou.shape[1] else -1
            pred_path = mine[best]["path"] if best >= 0 and iou[k, best] >= match_iou else ()
            for level in range(1, len(path) + 1):
                total[level] = total.get(level, 0) + 1
                right[level] = right.get(level, 0) + (pred_path[:level] == path[:level])
    present = {a["category_id"] for a in g["annotations"] if not a.get("iscrowd", 0)}
    class_iou = {cats.display[c]: inter.get(c, 0) / union[c] for c in sorted(present) if union.get(c)}
    return EvalReport(
        mask_ap=ap, miou=float(np.mean(list(class_iou.values()))) if class_iou else 0.0, class_iou=class_iou,
        level_accuracy={lv: right.get(lv, 0) / total[lv] for lv in sorted(total)},
        level_counts=dict(sorted(total.items())),
        counts={"images": len(g["images"]), "gt_instances": sum(not a.get("iscrowd", 0) for a in g["annotations"]),
                **counts, "on_background": sum(1 for _, ok in judged if ok is None)},
        warnings=cats.warnings,
        label_precision=float(np.mean([bool(ok) for _, ok in judged])) if judged else None,
        reliability=reliability_table([(score, bool(ok)) for score, ok in judged]),
    )


#: Score bins of the reliability table.
SCORE_BINS = (0.0, 0.3, 0.5, 0.7, 0.9, 1.0 + 1e-9)


def reliability_table(scored: list[tuple[float, bool]]) -> tuple[dict[str, Any], ...]:
    """Within each score bin (:data:`SCORE_BINS`), how many predictions and the share that is right (``None`` when
    the bin is empty)."""
    rows = []
    for lo, hi in zip(SCORE_BINS[:-1], SCORE_BINS[1:], strict=True):
        hits = [ok for score, ok in scored if lo <= score < hi]
        rows.append({"bin": f"[{lo:.1f}, {min(hi, 1.0):.1f}{']' if hi > 1 else ')'}", "predictions": len(hits),
                     "right": float(np.mean(hits)) if hits else None})
    return tuple(rows)


def _judge_predictions(mine: list[dict[str, Any]], dt_rles: list[M.RLE], gts: list[dict[str, Any]],
                       gt_rles: list[M.RLE], cats: _Categories) -> list[tuple[float, bool | None]]:
    """``(score, right)`` per labelled prediction of one image (unknown ones are not labels), judged by the
    ground-truth instance under most of its pixels (parts among parts, objects among objects; of instances nested in
    one another, the closest fit); ``right`` is ``None`` for a prediction lying mostly outside every instance
    (counted wrong)."""
    labelled = [k for k, d in enumerate(mine) if tuple(d["path"]) not in (("unknown",), ("unknown part",))]
    if not labelled:
        return []
    inter = M.intersection_matrix(dt_rles, gt_rles) if gt_rles else np.zeros((len(mine), 0))
    area = np.asarray(M.area(dt_rles), dtype=np.float64)
    gt_area = np.asarray(M.area(gt_rles), dtype=np.float64) if gt_rles else np.zeros(0)
    out: list[tuple[float, bool | None]] = []
    for k in labelled:
        d = mine[k]
        part = d["category_id"] in cats.parts
        cols = [j for j, a in enumerate(gts) if (a["category_id"] in cats.parts) == part]
        best = max(cols, key=lambda j: (inter[k, j], inter[k, j] / (area[k] + gt_area[j] - inter[k, j])),
                   default=None)
        if best is None or inter[k, best] < 0.5 * area[k]:
            out.append((d["score"], None))
            continue
        truth, path = cats.paths[gts[best]["category_id"]], tuple(d["path"])
        out.append((d["score"], path == truth if part else truth[:len(path)] == path))
    return out


def _matched_predictions(p: dict[str, Any], g: dict[str, Any], cats: _Categories
                         ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Predictions with their ground-truth image and category; counts of those used, dropped and ignored."""
    match_image = _image_matcher(g["images"])
    pred_images = {im["id"]: im for im in p["images"]}
    pred_cats = {c["id"]: c for c in p.get("categories", [])}
    dts, dropped, ignored = [], 0, 0
    for ann in p["annotations"]:
        im = pred_images.get(ann["image_id"])
        gim = match_image(im["file_name"]) if im else None
        cid, is_part = cats.match(ann, pred_cats)
        if gim is None or cid is None:
            if gim is not None and is_part:
                ignored += 1  # a part the ground truth has no category for: not a false positive
            else:
                dropped += 1
            continue
        path = cats.paths[cid] if cats.by_path is None else path_tuple(ann.get("label_path")) or cats.paths[cid]
        dts.append({"image_id": gim["id"], "category_id": cid, "segmentation": ann["segmentation"],
                    "score": float(ann.get("score", 1.0)), "path": path})
    return dts, {"predictions": len(dts), "dropped": dropped, "parts_ignored": ignored}


def _coco_ap(g: dict[str, Any], dts: list[dict[str, Any]]) -> dict[str, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not dts:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    gt_coco = COCO()
    gt_coco.dataset = json.loads(json.dumps(g))
    with contextlib.redirect_stdout(io.StringIO()):
        gt_coco.createIndex()
        results = [{k: d[k] for k in ("image_id", "category_id", "segmentation", "score")} for d in dts]
        ev = COCOeval(gt_coco, gt_coco.loadRes(json.loads(json.dumps(results))), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "AP75": float(ev.stats[2])}


def _accumulate_iou(gt_map: np.ndarray, dt_map: np.ndarray, valid: np.ndarray, inter: dict[int, int],
                    union: dict[int, int]) -> None:
    for c in set(np.unique(gt_map[valid])) | set(np.unique(dt_map[valid])):
        if c == 0:
            continue
        a, b = (gt_map == c) & valid, (dt_map == c) & valid
        inter[int(c)] = inter.get(int(c), 0) + int((a & b).sum())
        union[int(c)] = union.get(int(c), 0) + int((a | b).sum())


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


def _check_sizes(images: list[dict[str, Any]], dts: list[dict[str, Any]]) -> None:
    """Refuse, naming the image and both sizes, predictions whose masks are not the size of their ground-truth image
    (an EXIF-rotated photo against a ground truth stored unrotated, or the other way round)."""
    sizes = {im["id"]: (int(im["height"]), int(im["width"])) for im in images}
    names = {im["id"]: im.get("file_name", im["id"]) for im in images}
    for d in dts:
        got = tuple(int(v) for v in d["segmentation"]["size"])
        want = sizes.get(d["image_id"])
        if want is not None and got != want:
            raise ClipsamError(
                f"image {names[d['image_id']]!r}: the prediction's masks are {got[1]}x{got[0]} (WxH) but the ground "
                f"truth's image is {want[1]}x{want[0]}; was one of them rotated (EXIF orientation) or resized? Give "
                "both at the same size")


def _semantic(rles: list[M.RLE], cats: list[int], size: tuple[int, int]) -> np.ndarray:
    return paint(rles, cats, size, dtype=np.int64)


def _evaluate_png(p: dict[str, Any], folder: Path, classes: Any) -> EvalReport:
    from PIL import Image

    if classes is None:
        raise ClipsamError("PNG ground truth needs a class list: --classes classes.txt (one name per line)")
    if isinstance(classes, (str, os.PathLike)):
        names = [ln.strip() for ln in read_text_capped(classes, "class list").splitlines() if ln.strip()]
    else:
        names = [str(c) for c in classes]
    index = {n: i for i, n in enumerate(names)}
    background = index.get("background", -1)
    cats = _Categories(paths={i: (n,) for i, n in enumerate(names)}, parts=frozenset(), by_path=None,
                       by_name=index, display=dict(enumerate(names)))
    pred_cats = {c["id"]: c for c in p.get("categories", [])}
    by_image: dict[str, list[dict[str, Any]]] = {}
    images = {im["id"]: im for im in p["images"]}
    dropped = ignored = 0
    for ann in p["annotations"]:
        cls, is_part = cats.match(ann, pred_cats)
        if cls is None:
            ignored += is_part
            dropped += not is_part
            continue
        by_image.setdefault(Path(images[ann["image_id"]]["file_name"]).stem, []).append({**ann, "cls": cls})
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
                              "dropped": dropped, "parts_ignored": ignored})
