"""Opt-in: clipsam label output loaded by FiftyOne, the hierarchy kept as attributes.

FiftyOne runs its own database (MongoDB), so this test is not part of the default run::

    pip install fiftyone && python -m pytest -m fiftyone tests/test_fiftyone.py
"""

from __future__ import annotations

import pytest
from PIL import Image

from clipsam.testing import oracle_label_run, synthetic_scene

pytestmark = pytest.mark.fiftyone


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """``(photos, annotations.json, check)``: the oracle scene labelled, and a check of FiftyOne detections."""
    pytest.importorskip("fiftyone")
    tmp_path = tmp_path_factory.mktemp("fiftyone")
    scene = synthetic_scene()
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(scene.image).save(photos / "scene.png")
    coco = oracle_label_run(photos, tmp_path / "labels", scene)

    names = {c["label_path"]: c["name"] for c in coco["categories"]}
    head_id = next(a["id"] for a in coco["annotations"] if a["label_path"] == "animal/dog/head")

    def check(dets):
        assert len(dets) == len(coco["annotations"])
        by_path = {d["label_path"]: d for d in dets}
        for a in coco["annotations"]:
            if a["label_path"]:
                d = by_path[a["label_path"]]
                assert d.label == names[a["label_path"]] and d["kind"] == a["kind"]
        assert by_path["animal/dog/head"].label == "dog/head"  # its own name, not merged into a "head"
        assert by_path["animal/dog/head/ear"]["parent_id"] == head_id
        assert all(d.mask is not None for d in dets)

    return photos, tmp_path / "labels" / "annotations.json", check


def test_fiftyone_coco_parser_keeps_names_and_hierarchy(labelled):
    """FiftyOne's own COCO parser (what Dataset.from_dir runs), which needs no database."""
    import fiftyone.utils.coco as fouc

    photos, annotations, check = labelled
    importer = fouc.COCODetectionDatasetImporter(data_path=str(photos), labels_path=str(annotations),
                                                 label_types="segmentations", extra_attrs=True)
    with importer:
        ((_, _, labels),) = list(importer)
    check(labels.detections)


def test_fiftyone_dataset_from_readme(labelled):
    """The README's three lines, where FiftyOne's database can start."""
    import fiftyone as fo

    photos, annotations, check = labelled
    try:
        ds = fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset, data_path=str(photos),
                                 labels_path=str(annotations), label_types="segmentations", extra_attrs=True)
    except Exception as exc:  # no MongoDB here (fiftyone-db downloads it at install time)
        pytest.skip(f"FiftyOne's database is unavailable: {type(exc).__name__}")
    try:
        (sample,) = list(ds)
        check(sample["segmentations"].detections)
    finally:
        ds.delete()
