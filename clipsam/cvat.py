"""CVAT export: ``cvat/annotations.xml`` in *CVAT for images 1.1*, the format CVAT uploads and Datumaro reads, with
``cvat/images/`` links to the labelled images (the layout of a CVAT dataset).

The hierarchy as CVAT holds it:

- every COCO category is a CVAT label (the same unique names: ``dog/head`` and ``cat/head`` stay two labels), each
  declaring clipsam's attributes, so CVAT and Datumaro keep them: ``label_path`` (``animal/dog/head``), ``kind``
  (object, part, unknown, …), ``score``, ``region_id`` (the COCO annotation id) and ``parent_id`` (the parent's
  ``region_id``; empty for none);
- each whole and all its parts share a ``group_id`` (CVAT's own grouping: select one, see its group), one group per
  tree of regions; a region with no parts and no parent has none;
- ``z_order`` is the depth in the tree, so parts are drawn over their wholes in CVAT and in anything made from
  this file (Datumaro's VOC and mask exports paint by ``z_order``).

Masks are CVAT's RLE: run lengths over the mask's bounding box, row by row, starting with a run of background.
Pure numpy + pycocotools; no torch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import numpy as np

from .core import masks as M
from .core.regions import KINDS
from .core.tree import depths
from .files import atomic_write

__all__ = ["ATTRIBUTES", "cvat_rle", "cvat_xml", "write_cvat"]

#: the attributes every label declares: (name, CVAT input type, values)
ATTRIBUTES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("label_path", "text", ()), ("kind", "select", KINDS), ("score", "text", ()), ("region_id", "text", ()),
    ("parent_id", "text", ()))


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(value: str) -> str:
    """*value* as XML can hold it: a name's undecodable bytes (kept by Python as lone surrogates) and control
    characters become U+FFFD."""
    text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return _NOT_XML.sub("\ufffd", text)


def cvat_rle(mask: np.ndarray) -> tuple[list[int], tuple[int, int, int, int]]:
    """``(counts, (left, top, width, height))`` of a boolean ``(H, W)`` mask: CVAT's run lengths over the tight
    box, row-major, the first run background (0 when the box's first pixel is set). An empty mask has no box:
    ``([], (0, 0, 0, 0))``."""
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not len(ys):
        return [], (0, 0, 0, 0)
    top, left = int(ys[0]), int(xs[0])
    crop = np.asarray(mask[top:ys[-1] + 1, left:xs[-1] + 1], dtype=bool).ravel()
    edges = np.flatnonzero(crop[1:] != crop[:-1]) + 1
    bounds = np.concatenate([[0], edges, [crop.size]])
    counts = np.diff(bounds).tolist()
    if crop[0]:
        counts = [0, *counts]
    return [int(c) for c in counts], (left, top, int(xs[-1] - left + 1), int(ys[-1] - top + 1))


def _trees(annotations: Sequence[Mapping[str, Any]]) -> tuple[dict[int, int], dict[int, int]]:
    """``(depth, group)`` by annotation id: the depth below its tree's root (:func:`clipsam.core.tree.depths`), and
    a group id per tree of more than one region (0: alone). A parent outside *annotations* makes a root."""
    ids = [int(a["id"]) for a in annotations]
    index = {aid: k for k, aid in enumerate(ids)}
    parent = np.asarray([index.get(a.get("parent_id"), -1) if a.get("parent_id") is not None else -1
                         for a in annotations], dtype=np.int64)
    depth = depths(parent)
    root = np.arange(len(ids))
    for k in np.argsort(depth, kind="stable"):  # parents first: a node's root is its parent's
        if parent[k] >= 0:
            root[k] = root[parent[k]]
    roots, sizes = np.unique(root, return_counts=True)
    numbers = {int(r): n for n, r in enumerate(roots[sizes > 1], 1)}
    return ({aid: int(depth[k]) for k, aid in enumerate(ids)},
            {aid: numbers.get(int(root[k]), 0) for k, aid in enumerate(ids)})


def _meta(root: ET.Element, coco: Mapping[str, Any]) -> None:
    from .overlay import category_colour

    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    for tag, text in (("name", "clipsam"), ("size", str(len(coco["images"]))), ("mode", "annotation"),
                      ("overlap", "0")):
        ET.SubElement(task, tag).text = text
    labels = ET.SubElement(task, "labels")
    for cat in coco["categories"]:
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = _xml_text(cat["name"])
        ET.SubElement(label, "color").text = "#{:02x}{:02x}{:02x}".format(*category_colour(cat["label_path"]))
        ET.SubElement(label, "type").text = "mask"
        attributes = ET.SubElement(label, "attributes")
        for name, kind, values in ATTRIBUTES:
            attr = ET.SubElement(attributes, "attribute")
            default = _xml_text(cat["label_path"]) if name == "label_path" else (values[0] if values else "")
            for tag, text in (("name", name), ("mutable", "False"), ("input_type", kind),
                              ("default_value", default), ("values", "\n".join(values) or default)):
                ET.SubElement(attr, tag).text = text


def _mask_element(parent: ET.Element, ann: Mapping[str, Any], name: str, depth: int, group: int) -> bool:
    counts, (left, top, width, height) = cvat_rle(M.decode(ann["segmentation"]))
    if not counts:
        return False
    shape = ET.SubElement(parent, "mask", {
        "label": _xml_text(name), "source": "auto", "occluded": "0", "rle": ", ".join(map(str, counts)),
        "left": str(left), "top": str(top), "width": str(width), "height": str(height), "z_order": str(depth)})
    if group:
        shape.set("group_id", str(group))
    values = {"label_path": _xml_text(ann.get("label_path", "")), "kind": ann.get("kind", "object"),
              "score": f"{float(ann.get('score', 1.0)):.4f}", "region_id": str(ann["id"]),
              "parent_id": "" if ann.get("parent_id") is None else str(ann["parent_id"])}
    for attr_name, _, _ in ATTRIBUTES:
        ET.SubElement(shape, "attribute", {"name": attr_name}).text = values[attr_name]
    return True


def cvat_xml(coco: Mapping[str, Any], names: Mapping[int, str] | None = None) -> tuple[bytes, int]:
    """``(document, masks written)``: *coco* (a clipsam COCO dict) as CVAT for images 1.1. Each image is named
    ``names[image id]`` when given, else its ``file_name`` (CVAT matches annotations to a task's images by name);
    annotations without a category or with an empty mask are left out."""
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    _meta(root, coco)
    label_names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    written = 0
    for frame, img in enumerate(sorted(coco["images"], key=lambda i: i["id"])):
        name = (names or {}).get(img["id"], img["file_name"])
        image = ET.SubElement(root, "image", {"id": str(frame), "name": _xml_text(name),
                                              "width": str(img["width"]), "height": str(img["height"])})
        anns = by_image.get(int(img["id"]), [])
        depth, group = _trees(anns)
        for ann in anns:
            name = label_names.get(int(ann.get("category_id", 0)))
            if name is not None:
                written += _mask_element(image, ann, name, depth[int(ann["id"])], group[int(ann["id"])])
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n", written


def write_cvat(out: str | os.PathLike, coco: Mapping[str, Any],
               sources: Mapping[int, tuple[str, str]] | None = None) -> dict[str, int]:
    """Write a CVAT for images 1.1 dataset into ``out/cvat``: ``annotations.xml`` and ``images/<name>`` links to the
    labelled images (the layout CVAT exports and imports, and Datumaro reads: zip the folder with ``zip -r``, which
    stores the images, not the links). *sources* maps image ids to ``(image path, output stem)``: an image is named
    ``<stem><its ending>``, its relative path when the run labelled a folder; without one it keeps its
    ``file_name`` and gets no link. Returns ``{"images": linked, "masks": written}``."""
    from .yolo import link_image

    folder = Path(out) / "cvat"
    names = {}
    for img in coco["images"]:
        if img["id"] in (sources or {}):
            path, stem = sources[img["id"]]
            names[img["id"]] = name = f"{stem}{Path(img['file_name']).suffix}"
            link = folder / "images" / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link_image(path, link)
    document, written = cvat_xml(coco, names)
    folder.mkdir(exist_ok=True)
    atomic_write(folder / "annotations.xml", document)
    return {"images": len(names), "masks": written}
