"""Opt-in: clipsam label output loaded by FiftyOne, the hierarchy kept as attributes.

FiftyOne runs its own database (MongoDB), so this test is not part of the default run::

    pip install fiftyone pycocotools && python -m pytest -m fiftyone tests/test_fiftyone.py

With no database of its own (fiftyone-db fetches MongoDB at install time), point FiftyOne at one with
``FIFTYONE_DATABASE_URI=mongodb://127.0.0.1:27017``; without any, the database test skips.
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
    """FiftyOne's own COCO parser (what Dataset.from_dir runs), which needs no database; with
    include_annotation_id=True every parent_id resolves to a detection, which link_parents turns into links."""
    import fiftyone.utils.coco as fouc

    from clipsam.integrations.fiftyone import link_parents

    photos, annotations, check = labelled
    importer = fouc.COCODetectionDatasetImporter(data_path=str(photos), labels_path=str(annotations),
                                                 label_types="segmentations", extra_attrs=True,
                                                 include_annotation_id=True)
    with importer:
        ((_, _, labels),) = list(importer)
    dets = labels.detections
    check(dets)
    with_parent = [d for d in dets if d["parent_id"] is not None]
    assert link_parents(dets) == len(with_parent) > 0
    by_id = {d.id: d for d in dets}
    for d in with_parent:
        assert by_id[d["parent"]]["coco_id"] == d["parent_id"] and d["depth"] == by_id[d["parent"]]["depth"] + 1


def test_fiftyone_dataset_from_readme(labelled):
    """The README's lines, as written, where FiftyOne's database can start (FIFTYONE_DATABASE_URI)."""
    import fiftyone as fo
    from fiftyone import ViewField as F

    from clipsam.integrations.fiftyone import load_coco

    photos, annotations, check = labelled
    try:
        ds = fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset, data_path=str(photos),
                                 labels_path=str(annotations), label_types="segmentations",
                                 include_annotation_id=True, extra_attrs=True)
    except Exception as exc:  # no MongoDB here (fiftyone-db downloads it at install time)
        pytest.skip(f"FiftyOne's database is unavailable: {type(exc).__name__}")
    try:
        (sample,) = list(ds)
        check(sample.ground_truth.detections)
        linked = load_coco(photos, annotations)
        (sample,) = list(linked)
        dets = sample.ground_truth.detections
        check(dets)
        dog = next(d for d in dets if d["label_path"] == "animal/dog")
        parts = linked.filter_labels("ground_truth", F("parent") == dog.id)
        assert sorted(d.label for d in parts.first().ground_truth.detections) == ["dog/head"]
        assert max(d["depth"] for d in dets) == 2  # dog -> head -> ear
    finally:
        ds.delete()
        if "linked" in locals():
            linked.delete()
