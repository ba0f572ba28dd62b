"""clipsam's label output in FiftyOne, the part -> whole tree kept as links between detections.

FiftyOne's COCO importer keeps clipsam's extra fields as detection attributes (``label_path``, ``kind``, ``score``,
``parent_id``), but ``parent_id`` is a COCO annotation id, which FiftyOne keeps only as ``coco_id`` and only with
``include_annotation_id=True``. :func:`link_parents` turns it into FiftyOne's own ids::

    from clipsam.integrations.fiftyone import load_coco
    ds = load_coco("photos/", "labels/annotations.json")          # field "ground_truth"
    from fiftyone import ViewField as F
    dog = ds.first().ground_truth.detections[0]
    parts = ds.filter_labels("ground_truth", F("parent") == dog.id)  # the dog's parts

Each detection gets ``parent`` (the FiftyOne id of its whole, ``None`` for none) and ``depth`` (0 for a whole, 1 for
its parts, …). Needs ``pip install fiftyone pycocotools``; FiftyOne's database must be able to start.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

__all__ = ["link_parents", "load_coco"]


def link_parents(detections: Sequence[Any]) -> int:
    """Set ``parent`` and ``depth`` on one image's *detections* (FiftyOne ``Detection`` objects imported with
    ``include_annotation_id=True``) from their ``coco_id`` and ``parent_id``; returns how many have a parent here.

    Raises:
        ValueError: when the detections have no ``coco_id`` (imported without ``include_annotation_id=True``).
    """
    by_coco = {}
    for det in detections:
        coco_id = det.get_field("coco_id") if det.has_field("coco_id") else None
        if coco_id is None:
            raise ValueError("the detections have no coco_id: import with include_annotation_id=True")
        by_coco[int(coco_id)] = det
    parent_of = {}
    for coco_id, det in by_coco.items():
        parent = det.get_field("parent_id") if det.has_field("parent_id") else None
        parent_of[coco_id] = int(parent) if parent is not None and int(parent) in by_coco else None
    linked = 0
    for coco_id, det in by_coco.items():
        depth, node, seen = 0, parent_of[coco_id], {coco_id}
        while node is not None and node not in seen:
            depth, seen = depth + 1, seen | {node}
            node = parent_of[node]
        det["parent"] = by_coco[parent_of[coco_id]].id if parent_of[coco_id] is not None else None
        det["depth"] = depth
        linked += parent_of[coco_id] is not None
    return linked


def load_coco(data_path: str | os.PathLike, labels_path: str | os.PathLike, *, field: str = "ground_truth",
              name: str | None = None) -> Any:
    """A FiftyOne dataset of a clipsam label output: masks as ``Detection``s in *field*, every attribute kept
    (``label_path``, ``kind``, ``score``, ``parent_id``, ``coco_id``) and parents linked (:func:`link_parents`)."""
    import fiftyone as fo

    ds = fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset, data_path=str(data_path),
                             labels_path=str(labels_path), label_types="segmentations", label_field=field,
                             include_annotation_id=True, extra_attrs=True, name=name)
    for sample in ds.iter_samples(autosave=True):
        labels = sample[field]
        if labels is not None:
            link_parents(labels.detections)
    return ds
