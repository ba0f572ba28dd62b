"""clipsam eval on tiny hand-made data whose expected numbers are worked out in the comments."""

import json

import numpy as np
import pytest
from PIL import Image

from clipsam.core import masks as M
from clipsam.evaluate import evaluate


def _rle(rows, cols, size=(10, 10)):
    m = np.zeros(size, bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return M.encode(m)


def _gt():
    cats = [{"id": 1, "name": "dog", "supercategory": "animal", "label_path": "animal/dog"},
            {"id": 2, "name": "cat", "supercategory": "animal", "label_path": "animal/cat"},
            {"id": 3, "name": "puppy", "supercategory": "animal", "label_path": "animal/dog/puppy"}]
    anns = [  # G1 dog 25 px, G2 cat 25 px, G3 puppy 50 px
        {"id": 1, "image_id": 7, "category_id": 1, "segmentation": _rle((0, 5), (0, 5)), "area": 25,
         "bbox": [0, 0, 5, 5], "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 2, "segmentation": _rle((0, 5), (5, 10)), "area": 25,
         "bbox": [5, 0, 5, 5], "iscrowd": 0},
        {"id": 3, "image_id": 7, "category_id": 3, "segmentation": _rle((5, 10), (0, 10)), "area": 50,
         "bbox": [0, 5, 10, 5], "iscrowd": 0},
    ]
    return {"images": [{"id": 7, "file_name": "img1.jpg", "height": 10, "width": 10}], "categories": cats,
            "annotations": anns}


def _pred():
    p2 = M.merge([_rle((0, 5), (5, 10)), _rle((5, 7), (5, 10))])  # 35 px: IoU 25/35 with the cat
    anns = [
        {"id": 1, "image_id": 99, "category_id": 5, "segmentation": _rle((0, 5), (0, 5)), "score": 0.9,
         "label_path": ["animal", "dog"]},
        {"id": 2, "image_id": 99, "category_id": 6, "segmentation": p2, "score": 0.8, "label_path": ["animal", "cat"]},
        {"id": 3, "image_id": 99, "category_id": 5, "segmentation": _rle((5, 10), (0, 10)), "score": 0.7,
         "label_path": ["animal", "dog"]},  # the puppy, labelled only "dog"
        {"id": 4, "image_id": 99, "category_id": 8, "segmentation": _rle((9, 10), (9, 10)), "score": 0.6,
         "label_path": ["vehicle", "car"]},  # no such GT category: dropped
    ]
    return {"images": [{"id": 99, "file_name": "sub/img1.png", "height": 10, "width": 10}], "annotations": anns,
            "categories": []}


def test_coco_ground_truth_hand_computed(tmp_path):
    (tmp_path / "gt.json").write_text(json.dumps(_gt()))
    report = evaluate(_pred(), tmp_path / "gt.json")
    # AP per class: dog 1 (P1 ranks first), cat matched only at IoU thresholds .50-.70 (5 of 10): 0.5, puppy 0
    assert report.mask_ap["AP"] == pytest.approx((1 + 0.5 + 0) / 3, abs=1e-6)
    assert report.mask_ap["AP50"] == pytest.approx(2 / 3, abs=1e-6)
    assert report.mask_ap["AP75"] == pytest.approx(1 / 3, abs=1e-6)
    # semantic: dog 25 / (25 + 40 from the puppy labelled dog) ; cat 25/35 ; puppy 0
    assert report.class_iou == pytest.approx({"dog": 25 / 65, "cat": 25 / 35, "puppy": 0.0})
    assert report.miou == pytest.approx((25 / 65 + 25 / 35) / 3)
    # levels: all three right at levels 1 and 2; the puppy (only GT instance with a level 3) wrong at level 3
    assert report.level_accuracy == {1: 1.0, 2: 1.0, 3: 0.0}
    assert report.level_counts == {1: 3, 2: 3, 3: 1}
    assert report.counts == {"images": 1, "gt_instances": 3, "predictions": 3, "dropped": 1}


def test_png_ground_truth_hand_computed(tmp_path):
    gt = np.zeros((10, 10), np.uint8)
    gt[:5] = 1  # dog: 50 px
    gt[5:, :5] = 2  # cat: 25 px
    gt[5:, 5:] = 255  # ignored
    folder = tmp_path / "masks"
    folder.mkdir()
    Image.fromarray(gt).save(folder / "img1.png")
    pred = {"images": [{"id": 1, "file_name": "img1.jpg", "height": 10, "width": 10}], "categories": [],
            "annotations": [{"id": 1, "image_id": 1, "segmentation": _rle((0, 7), (0, 10)), "score": 1.0,
                             "label_path": ["animal", "dog"]}]}
    report = evaluate(pred, folder, classes=["background", "dog", "cat"])
    # dog: predicted on 70 px, 10 of them ignored -> 60; all 50 GT dog pixels covered: 50/60. cat: 0
    assert report.class_iou == pytest.approx({"dog": 50 / 60, "cat": 0.0})
    assert report.miou == pytest.approx(50 / 120)
    assert report.mask_ap is None


def test_errors(tmp_path):
    from clipsam.errors import ClipsamError

    with pytest.raises(ClipsamError, match="no such prediction file"):
        evaluate(tmp_path / "nope.json", _gt())
    with pytest.raises(ClipsamError, match="class list"):
        evaluate(_pred(), tmp_path)
    with pytest.raises(ClipsamError, match="lack 'annotations'"):
        evaluate({"images": []}, _gt())
