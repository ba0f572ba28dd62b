"""clipsam's COCO output loaded by the tools users have: pycocotools, supervision, Datumaro, torchvision.

The file is a real ``clipsam label`` output of the oracle scene: objects **and parts**, whose part names repeat
(the dog's head and the cat's head), which is what used to break supervision and Datumaro.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from clipsam.export import category_table, unique_names
from clipsam.testing import oracle_label_run, oracle_segmenter, synthetic_scene


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """``(folder, annotations.json path, coco dict)`` of the oracle scene labelled with ``--unknown``."""
    root = tmp_path_factory.mktemp("interop")
    scene = synthetic_scene()
    images = root / "images"
    images.mkdir()
    Image.fromarray(scene.image).save(images / "scene.png")
    coco = oracle_label_run(images, root / "out", scene)
    return images, root / "out" / "annotations.json", coco


def test_category_names_are_unique_and_supercategories_are_parents():
    scene = synthetic_scene()
    cats = category_table(scene.taxonomy, include_unknown=True)
    names = [c["name"] for c in cats]
    assert len(names) == len(set(names))
    by_path = {c["label_path"]: c for c in cats}
    assert by_path["animal/dog/head"]["name"] == "dog/head" and by_path["animal/cat/head"]["name"] == "cat/head"
    assert by_path["animal/dog/head/ear"]["name"] == "ear"  # unique: the leaf alone
    assert by_path["animal/dog/head/ear"]["supercategory"] == "dog/head"  # the parent as this file names it
    assert by_path["animal/dog"]["supercategory"] == "animal" and by_path["animal"]["supercategory"] == "animal"
    assert unique_names([("a", "b"), ("x", "a", "b"), ("b",)]) == ["a/b", "x/a/b", "b"]
    from clipsam.core.taxonomy import load_taxonomy

    for name in ("everyday", "coco", "parts", "stuff"):
        shipped = [c["name"] for c in category_table(load_taxonomy(name), include_unknown=True)]
        assert len(shipped) == len(set(shipped)), name
        table = category_table(load_taxonomy(name))  # every supercategory is a category of the file (a parent)
        assert {c["supercategory"] for c in table} <= {c["name"] for c in table}, name


def test_pycocotools_loads_evaluates_and_reads_info(labelled):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _, path, data = labelled
    assert {"description", "version", "year", "date_created", "url"} <= set(data["info"])
    assert data["licenses"] == []
    with contextlib.redirect_stdout(io.StringIO()) as out:
        gt = COCO(str(path))
        gt.info()
    assert "year" in out.getvalue()
    assert {a["category_id"] for a in data["annotations"]} <= set(gt.getCatIds())
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(data["annotations"])  # the annotations list, with their scores
        ev = COCOeval(gt, dt, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)  # the file against itself


def test_supervision_loads_masks_with_parts(labelled):
    sv = pytest.importorskip("supervision")
    images, path, data = labelled
    ds = sv.DetectionDataset.from_coco(images_directory_path=str(images), annotations_path=str(path),
                                       force_masks=True)
    assert len(ds) == 1
    _, image, det = ds[0]
    assert len(det) == len(data["annotations"]) and det.mask is not None
    assert det.mask.shape[1:] == image.shape[:2]
    assert len(set(ds.classes)) == len(ds.classes) == len(data["categories"])
    assert {"dog/head", "cat/head", "wheel"} <= set(ds.classes)


def test_datumaro_imports_it_as_coco_instances(labelled, tmp_path):
    dm = pytest.importorskip("datumaro")
    images, path, data = labelled
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "images" / "default").mkdir(parents=True)
    shutil.copy(path, root / "annotations" / "instances_default.json")
    shutil.copy(images / "scene.png", root / "images" / "default" / "scene.png")
    dataset = dm.Dataset.import_from(str(root), "coco_instances")
    items = list(dataset)
    assert len(items) == 1
    labels = dataset.categories()[dm.AnnotationType.label]
    assert len(labels) == len(data["categories"])
    masks = [a for a in items[0].annotations if a.type == dm.AnnotationType.mask]
    assert len(masks) == len(data["annotations"])
    names = {labels[a.label].name for a in masks}
    assert {"dog/head", "ear", "wheel"} <= names
    known = {label.name for label in labels}
    assert all(label.parent in known for label in labels)  # each label's parent (COCO's supercategory) is a label
    assert labels[labels.find("ear")[0]].parent == "dog/head"


def test_torchvision_coco_detection(labelled):
    from torchvision.datasets import CocoDetection

    images, path, data = labelled
    with contextlib.redirect_stdout(io.StringIO()):
        ds = CocoDetection(str(images), str(path))
    image, target = ds[0]
    assert image.size == (200, 120) and len(target) == len(data["annotations"])
    from pycocotools import mask as mask_utils

    areas = [int(mask_utils.area(t["segmentation"])) for t in target]
    assert areas == [t["area"] for t in target] and np.all(np.asarray(areas) > 0)


def test_python_interop_supervision_pandas_overlay(tmp_path):
    sv = pytest.importorskip("supervision")
    scene = synthetic_scene()
    path = tmp_path / "scene.png"
    Image.fromarray(scene.image).save(path)
    seg = oracle_segmenter(scene).segment_everything(str(path))
    det = seg.to_supervision()
    assert isinstance(det, sv.Detections) and len(det) == len(seg)
    assert det.mask.shape == (len(seg), *scene.image.shape[:2])
    np.testing.assert_array_equal(det.mask[0], seg[0].mask())
    np.testing.assert_allclose(det.confidence, [r.score for r in seg])
    coco = seg.to_coco()
    assert list(det.class_id) == [a["category_id"] for a in coco["annotations"]]
    names = {c["id"]: c["name"] for c in coco["categories"]}  # unique within the file: only a dog has a head here
    assert list(det.data["class_name"]) == [names[a["category_id"]] for a in coco["annotations"]]
    assert "head" in set(det.data["class_name"]) and "animal/dog/head" in set(det.data["label_path"])
    assert list(det.data["parent_id"]) == [-1 if r.parent_id is None else r.parent_id for r in seg]
    import pandas as pd

    table = seg.to_pandas()
    assert len(table) == len(seg) and list(table["label_path"]) == [r.label_path_str for r in seg]
    assert (table["area"] == [r.area for r in seg]).all()
    # "no parent" is <NA> in a nullable integer column, not NaN turning every parent id into a float
    assert str(table["parent_id"].dtype) == "Int64" and table["parent_id"].isna().sum() == sum(
        r.parent_id is None for r in seg) > 0
    assert [None if pd.isna(v) else int(v) for v in table["parent_id"]] == [r.parent_id for r in seg]
    picture = seg.overlay()
    assert picture.size == (scene.image.shape[1], scene.image.shape[0])
    assert seg._repr_png_().startswith(b"\x89PNG")
    from_array = oracle_segmenter(scene).segment_everything(scene.image)
    assert from_array._repr_png_() is None  # no file to draw on
    with pytest.raises(ValueError, match="needs the image"):
        from_array.overlay()
    assert from_array.overlay(scene.image).size == picture.size


def test_label_path_is_one_type_and_eval_of_itself_is_perfect(labelled, tmp_path):
    from clipsam.evaluate import evaluate

    _, path, data = labelled
    assert {type(c["label_path"]) for c in data["categories"]} == {str}
    assert {type(a["label_path"]) for a in data["annotations"]} == {str}
    cats = {c["id"]: c for c in data["categories"]}
    for a in data["annotations"]:  # the annotation's path is its category's (unknown regions: no path)
        assert a["label_path"] == ("" if a["kind"].startswith("unknown") else cats[a["category_id"]]["label_path"])
    report = evaluate(path, path)
    assert report.mask_ap["AP"] == pytest.approx(1.0) and report.miou == pytest.approx(1.0)
    assert len(report.level_accuracy) >= 3 and set(report.level_accuracy.values()) == {1.0}
    old = dict(data, annotations=[dict(a, label_path=[p for p in a["label_path"].split("/") if p])
                                  for a in data["annotations"]])  # lists, as older clipsam files have
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps(old))
    assert evaluate(legacy, path).to_dict() == report.to_dict()


class _Detection(dict):
    """What link_parents reads and writes of a FiftyOne Detection: id, has_field, get_field, item assignment."""

    def __init__(self, id_: str, **fields):
        super().__init__(fields)
        self.id = id_

    def has_field(self, name):
        return name in self

    def get_field(self, name):
        return self[name]


def test_link_parents_turns_coco_parent_ids_into_label_ids():
    from clipsam.integrations.fiftyone import link_parents

    dets = [_Detection("a", coco_id=7, parent_id=None), _Detection("b", coco_id=8, parent_id=7),
            _Detection("c", coco_id=9, parent_id=8), _Detection("d", coco_id=10, parent_id=99),  # parent filtered out
            _Detection("e", coco_id=11, parent_id=12), _Detection("f", coco_id=12, parent_id=11)]  # a cycle ends
    assert link_parents(dets) == 4
    assert [(d["parent"], d["depth"]) for d in dets] == [(None, 0), ("a", 1), ("b", 2), (None, 0), ("f", 1),
                                                          ("e", 1)]
    with pytest.raises(ValueError, match="include_annotation_id=True"):
        link_parents([_Detection("x", parent_id=None)])
