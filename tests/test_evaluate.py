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
    assert report.counts == {"images": 1, "gt_instances": 3, "predictions": 3, "dropped": 1, "parts_ignored": 0,
                             "on_background": 0}
    # every labelled prediction: each lies mostly on an instance whose label it names or generalises ("dog" on the
    # puppy is right; the cat prediction has 25 of its 35 px on the cat)
    assert report.label_precision == 1.0


def test_label_precision_and_reliability_judge_every_prediction(tmp_path):
    """Not only the best match per instance: a half of the puppy labelled "cat" with score 0.95 is a confident wrong
    label, though the puppy's best match ("dog", 0.7) is right; a "dog" lying mostly on no instance is wrong too."""
    gt = _gt()
    gt["images"][0].update(height=10, width=20)
    for a in gt["annotations"]:
        a["segmentation"] = M.encode(np.pad(M.decode(a["segmentation"]), ((0, 0), (0, 10))))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    pred = _pred()
    pred["images"][0].update(height=10, width=20)
    for a in pred["annotations"]:
        a["segmentation"] = M.encode(np.pad(M.decode(a["segmentation"]), ((0, 0), (0, 10))))
    pred["annotations"] += [
        {"id": 5, "image_id": 99, "category_id": 6, "segmentation": _rle((5, 10), (0, 5), (10, 20)), "score": 0.95,
         "label_path": ["animal", "cat"]},  # half of the puppy, called a cat
        {"id": 6, "image_id": 99, "category_id": 5, "segmentation": _rle((0, 10), (12, 20), (10, 20)), "score": 0.4,
         "label_path": ["animal", "dog"]},  # on no instance
    ]
    report = evaluate(pred, tmp_path / "gt.json")
    assert report.level_accuracy == {1: 1.0, 2: 1.0, 3: 0.0}  # the best match per instance does not see them
    assert report.label_precision == pytest.approx(3 / 5) and report.counts["on_background"] == 1
    bins = {row["bin"]: (row["predictions"], row["right"]) for row in report.reliability}
    assert bins["[0.9, 1.0]"] == (2, 0.5) and bins["[0.7, 0.9)"] == (2, 1.0) and bins["[0.3, 0.5)"] == (1, 0.0)
    assert bins["[0.0, 0.3)"] == (0, None)
    assert report.to_dict()["reliability"][-1] == {"bin": "[0.9, 1.0]", "predictions": 2, "right": 0.5}


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


def _ann(aid, image_id, cid, rle, **extra):
    return {"id": aid, "image_id": image_id, "category_id": cid, "segmentation": rle, "area": int(M.area(rle)),
            "bbox": list(M.bbox_xywh(rle)), "iscrowd": 0, **extra}


def test_a_part_is_never_a_second_whole():
    """A dog's head used to count as a second dog: AP 1.0 -> 0.5 on this two-region case."""
    gt = {"images": [{"id": 1, "file_name": "d.png", "height": 10, "width": 10}],
          "categories": [{"id": 1, "name": "dog", "supercategory": "animal", "label_path": "animal/dog"}],
          "annotations": [_ann(1, 1, 1, _rle((0, 10), (0, 6)))]}
    pred = {"images": [{"id": 5, "file_name": "d.png", "height": 10, "width": 10}], "categories": [],
            "annotations": [
                {"id": 1, "image_id": 5, "segmentation": _rle((0, 10), (0, 6)), "score": 0.6,
                 "label_path": ["animal", "dog"], "kind": "object"},
                {"id": 2, "image_id": 5, "segmentation": _rle((0, 3), (0, 3)), "score": 0.9,
                 "label_path": ["animal", "dog", "head"], "kind": "part", "parent_id": 1}]}
    report = evaluate(pred, gt)
    assert report.mask_ap["AP"] == pytest.approx(1.0)
    assert report.counts["parts_ignored"] == 1 and report.counts["predictions"] == 1
    assert report.class_iou == {"dog": 1.0}


def test_images_match_by_relative_path_not_stem():
    a, b = _rle((0, 5), (0, 5)), _rle((5, 10), (5, 10))
    gt = {"images": [{"id": 1, "file_name": "a/001.jpg", "height": 10, "width": 10},
                     {"id": 2, "file_name": "b/001.jpg", "height": 10, "width": 10}],
          "categories": [{"id": 1, "name": "dog", "supercategory": "animal", "label_path": "animal/dog"}],
          "annotations": [_ann(1, 1, 1, a), _ann(2, 2, 1, b)]}
    pred = {"images": [{"id": 10, "file_name": "a/001.jpg", "height": 10, "width": 10},
                       {"id": 20, "file_name": "b/001.jpg", "height": 10, "width": 10}], "categories": [],
            "annotations": [{"id": k + 1, "image_id": i, "segmentation": m, "score": 0.9,
                             "label_path": ["animal", "dog"]} for k, (i, m) in enumerate([(10, a), (20, b)])]}
    report = evaluate(pred, gt)
    assert report.mask_ap["AP"] == pytest.approx(1.0) and report.miou == pytest.approx(1.0)
    ambiguous = {**pred, "images": [{"id": 10, "file_name": "001.png", "height": 10, "width": 10},
                                    {"id": 20, "file_name": "x/001.png", "height": 10, "width": 10}]}
    assert evaluate(ambiguous, gt).counts["dropped"] == 2  # two GT images share the stem: no guessing


def test_crowd_regions_are_ignored():
    dog, crowd = _rle((0, 5), (0, 5)), _rle((5, 10), (0, 10))
    gt = {"images": [{"id": 1, "file_name": "c.png", "height": 10, "width": 10}],
          "categories": [{"id": 1, "name": "person", "supercategory": "person", "label_path": "person"}],
          "annotations": [_ann(1, 1, 1, dog), {**_ann(2, 1, 1, crowd), "iscrowd": 1}]}
    pred = {"images": [{"id": 1, "file_name": "c.png", "height": 10, "width": 10}], "categories": [],
            "annotations": [{"id": 1, "image_id": 1, "segmentation": dog, "score": 0.5, "label_path": ["person"]},
                            {"id": 2, "image_id": 1, "segmentation": crowd, "score": 0.9, "label_path": ["person"]}]}
    report = evaluate(pred, gt)
    assert report.mask_ap["AP"] == pytest.approx(1.0)  # the detection on the crowd is not a false positive
    assert report.class_iou == {"person": 1.0}  # crowd pixels are ignored in the semantic IoU
    assert report.counts["gt_instances"] == 1


def _labelled_scene(tmp_path, scene, include_unknown=True, embedder=None):
    from clipsam.dataset import Filters, LabelJob, list_images, run_local
    from clipsam.segmenter import Segmenter
    from clipsam.testing import OracleEmbedder, OracleProposer

    folder = tmp_path / "imgs"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    Image.fromarray(scene.image).save(folder / "a" / "001.png")
    Image.fromarray(np.ascontiguousarray(scene.image[:, ::-1])).save(folder / "b" / "001.png")  # same stem
    seg = Segmenter.from_models(OracleProposer(scene), embedder or OracleEmbedder(scene), taxonomy=scene.taxonomy,
                                text_cache=False)
    job = LabelJob(tmp_path / "out", scene.taxonomy, filters=Filters(include_unknown=include_unknown),
                   segmenter_spec={"sam": "x", "clip": "y"})
    record = job.prepare()
    run_local(job, list_images(folder), segmenter=seg)
    job.finish(record, {})
    return json.loads((tmp_path / "out" / "annotations.json").read_text())


def test_a_labelled_file_against_itself_scores_one_everywhere(tmp_path, scene):
    """Objects, parts with repeated names (head, wheel), unknown regions, two images with one stem: AP 0.889 and
    'level 1 accuracy 0.000' for unknowns before."""
    coco = _labelled_scene(tmp_path, scene)
    kinds = {a["kind"] for a in coco["annotations"]}
    assert {"object", "part", "unknown"} <= kinds and len(coco["images"]) == 2
    report = evaluate(coco, coco)
    assert report.mask_ap == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0})
    assert report.miou == pytest.approx(1.0) and set(report.class_iou.values()) == {1.0}
    assert report.level_accuracy and set(report.level_accuracy.values()) == {1.0}
    assert report.counts["dropped"] == 0 and report.counts["parts_ignored"] == 0


def test_all_unknown_against_itself_is_right(tmp_path, scene):
    from clipsam.testing import OracleEmbedder

    class Blind(OracleEmbedder):  # sees nothing it can name: every region unknown
        def embed_images(self, crops):
            out = np.zeros((len(crops), self.dim), np.float32)
            out[:, self.axes["background"]] = 1.0
            return out

    coco = _labelled_scene(tmp_path, scene, embedder=Blind(scene))
    assert {a["kind"] for a in coco["annotations"]} == {"unknown"}
    report = evaluate(coco, coco)
    assert report.level_accuracy == {1: 1.0} and report.mask_ap["AP"] == pytest.approx(1.0)


def test_repeated_names_without_paths_warn():
    gt = {"images": [{"id": 1, "file_name": "x.png", "height": 10, "width": 10}],
          "categories": [{"id": 1, "name": "head", "supercategory": "dog"}, {"id": 2, "name": "head",
                                                                             "supercategory": "cat"}],
          "annotations": [_ann(1, 1, 1, _rle((0, 5), (0, 5)))]}
    report = evaluate({"images": gt["images"], "annotations": [], "categories": []}, gt)
    assert report.warnings and "repeat (head)" in report.warnings[0]
