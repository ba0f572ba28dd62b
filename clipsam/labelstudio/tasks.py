"""Label Studio task files with predictions, from a ``clipsam label`` run's COCO: import them into a project in one
step (the same results the ML backend gives), with the labeling config written next to them."""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.regions import Region
from ..core.taxonomy import Taxonomy
from ..files import atomic_write
from ..result import Segmentation
from .config import LabelConfig, label_config
from .results import prediction

__all__ = ["DEFAULT_ROOT", "coco_tasks", "write_label_studio"]

#: where Label Studio finds a task's image by default: its local-files server, with the labelled folder as
#: ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``
DEFAULT_ROOT = "/data/local-files/?d="
TASKS_FILE, CONFIG_FILE = "label-studio.json", "label-studio-config.xml"


def _regions(anns: list[Mapping[str, Any]]) -> tuple[Region, ...]:
    out = []
    for a in anns:
        path = tuple(p for p in str(a.get("label_path") or "").split("/") if p)
        kind = str(a.get("kind", "object"))
        out.append(Region(id=int(a["id"]), rle={"size": list(a["segmentation"]["size"]),
                                                "counts": a["segmentation"]["counts"]},
                          bbox_xywh=tuple(float(v) for v in a["bbox"]), area=int(a["area"]),
                          label=path[-1] if path else kind, score=float(a.get("score", 0.0)), label_path=path,
                          kind=kind, predicted_iou=float(a.get("predicted_iou", 0.0)), parent_id=a.get("parent_id")))
    return tuple(out)


def image_url(root: str, file_name: str) -> str:
    """*root* + the image's path within the labelled folder, URL-quoted (``/`` kept)."""
    return root + urllib.parse.quote(file_name.replace(os.sep, "/"), safe="/")


def coco_tasks(coco: Mapping[str, Any], cfg: LabelConfig, *, root: str = DEFAULT_ROOT,
               model_version: str = "clipsam") -> list[dict[str, Any]]:
    """One Label Studio task per COCO image: ``data`` (the image at *root* + ``file_name``) and one prediction."""
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    tasks = []
    for im in coco["images"]:
        seg = Segmentation(image_size=(int(im["height"]), int(im["width"])),
                           regions=_regions(by_image.get(int(im["id"]), [])))
        tasks.append({"data": {cfg.image_key: image_url(root, str(im["file_name"])), "clipsam_image_id": im["id"]},
                      "predictions": [prediction(seg, cfg, model_version)]})
    return tasks


def write_label_studio(out: str | os.PathLike, coco: Mapping[str, Any], taxonomy: Taxonomy, *,
                       root: str = DEFAULT_ROOT, model_version: str = "clipsam") -> dict[str, int]:
    """Write ``label-studio.json`` (tasks with predictions) and ``label-studio-config.xml`` (the labeling config
    they fit) into *out*; returns counts of tasks and results."""
    xml = label_config(taxonomy)
    tasks = coco_tasks(coco, LabelConfig.parse(xml), root=root, model_version=model_version)
    atomic_write(Path(out) / CONFIG_FILE, xml.encode("utf-8"))
    atomic_write(Path(out) / TASKS_FILE, json.dumps(tasks).encode("utf-8"))
    return {"tasks": len(tasks), "results": sum(len(t["predictions"][0]["result"]) for t in tasks)}
