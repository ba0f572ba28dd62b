"""YOLO segmentation export (Ultralytics' format): ``data.yaml``, ``labels/<name>.txt``, ``images/<name>``.

Each annotation becomes one line ``<class> x1 y1 x2 y2 …`` with coordinates normalised to ``[0, 1]``. The
polygon is the mask's outer boundary (marching squares, simplified within ``tolerance`` pixels). A mask in
several pieces becomes one polygon whose pieces are joined by zero-width bridges (one object stays one line, as
Ultralytics' own COCO converter does); holes cannot be written in this format and are filled. Class indices are
the COCO category ids minus one, so ``names`` in ``data.yaml`` lists the same unique names as
``annotations.json``. ``images/`` holds symbolic links to the labelled images, because Ultralytics finds a label
file by replacing ``/images/`` with ``/labels/`` in the image's path. Pure numpy + scikit-image; no torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .core.polygons import mask_polygon
from .errors import OutputError
from .files import atomic_write, replace_link, same_file

__all__ = ["link_image", "mask_polygon", "write_yolo", "yolo_lines"]


def yolo_lines(annotations: Sequence[Mapping[str, Any]], size: tuple[int, int], tolerance: float = 1.0) -> list[str]:
    """One YOLO-seg line per annotation of one image (``category_id`` 1.. becomes class ``id - 1``; annotations
    without a category, or with an empty mask, are left out)."""
    h, w = size
    lines = []
    for ann in annotations:
        if int(ann.get("category_id", 0)) < 1:
            continue
        poly = mask_polygon(ann["segmentation"], tolerance)
        if len(poly) < 3:
            continue
        norm = np.clip(poly / np.array([w, h], dtype=np.float64), 0.0, 1.0)
        lines.append(" ".join([str(int(ann["category_id"]) - 1), *(f"{v:.6f}" for v in norm.ravel())]))
    return lines


def link_image(source: str, link: Path) -> None:
    """Put a link to *source* at *link*, unless the image itself already lies there (a YOLO layout labelled in
    place); a regular file that is not that image is never replaced by a link."""
    if link.exists() and not link.is_symlink():
        if same_file(link, source):
            return
        raise OutputError(f"{link}: is a file clipsam did not write (it writes links to the images here); move it, "
                          "or choose another --out")
    replace_link(source, link)


def write_yolo(out: str | os.PathLike, coco: Mapping[str, Any], sources: Mapping[int, tuple[str, str]],
               tolerance: float = 1.0) -> dict[str, int]:
    """Write a YOLO-seg dataset of *coco* into *out*: ``data.yaml`` (``names``; ``train`` and ``val`` both
    ``images``, pseudo-labels have no split), ``labels/<stem>.txt`` and ``images/<stem><ending>`` links.

    *sources* maps each image id to ``(image path, output stem)``; images without one are left out. Files are
    written atomically; a rerun replaces them. An image that already lies at ``images/<name>`` (a YOLO layout
    labelled in place) is left there; any other regular file there is refused (:class:`~clipsam.errors.OutputError`),
    never replaced. Returns counts of images and polygons written.
    """
    import yaml

    root = Path(out)
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    images = polygons = 0
    for im in coco["images"]:
        if im["id"] not in sources:
            continue
        path, stem = sources[im["id"]]
        lines = yolo_lines(by_image.get(im["id"], []), (int(im["height"]), int(im["width"])), tolerance)
        label = root / "labels" / f"{stem}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(label, "".join(line + "\n" for line in lines).encode())
        link = root / "images" / f"{stem}{Path(im['file_name']).suffix.lower()}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link_image(path, link)
        images += 1
        polygons += len(lines)
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    if [c["id"] for c in cats] != list(range(1, len(cats) + 1)):
        raise ValueError("YOLO export needs category ids 1..N")
    data = {"train": "images", "val": "images", "nc": len(cats), "names": {c["id"] - 1: c["name"] for c in cats}}
    header = ("# YOLO segmentation dataset written by clipsam (class = COCO category id - 1).\n"
              "# train and val are the same pseudo-labelled images: split them before training.\n")
    atomic_write(root / "data.yaml", (header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)).encode())
    return {"images": images, "polygons": polygons}
