"""Bugs from issue 24's code review, fixed with tests that fail on the code before (items 1, 5, 6 and 7 of its list;
item 1, a region database whose first image had no region, is in test_safety_inputs.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsam.cli import app
from clipsam.core import masks as M
from clipsam.core.labels import TextBank
from clipsam.result import Region, Segmentation


def _box(h: int, w: int, y0: int, x0: int, y1: int, x1: int) -> M.RLE:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return M.encode(m)


def test_to_coco_without_unknown_relinks_parents_like_the_label_filter():
    """Item 5: an ear under an unknown part of the dog keeps the dog as its parent when unknown regions are left
    out (it used to lose its parent: ``None``)."""
    rles = [_box(40, 40, 0, 0, 40, 40), _box(40, 40, 0, 0, 20, 20), _box(40, 40, 0, 0, 5, 5)]
    regions = [Region(0, rles[0], M.bbox_xywh(rles[0]), 1600, "dog", 0.9, ("animal", "dog"), (0.9, 0.9), "object"),
               Region(1, rles[1], M.bbox_xywh(rles[1]), 400, "unknown part", 0.0, (), (), "unknown part", parent_id=0),
               Region(2, rles[2], M.bbox_xywh(rles[2]), 25, "ear", 0.8, ("animal", "dog", "ear"), (0.9, 0.9, 0.8),
                      "part", parent_id=1)]
    coco = Segmentation((40, 40), regions).to_coco(include_unknown=False)
    by_path = {a["label_path"]: a for a in coco["annotations"]}
    assert set(by_path) == {"animal/dog", "animal/dog/ear"}
    assert by_path["animal/dog/ear"]["parent_id"] == by_path["animal/dog"]["id"]


def test_a_label_with_undecodable_bytes_is_cached_like_any_other(tmp_path, tiny):
    """Item 6: a label from a command line with bytes that are not UTF-8 (kept as lone surrogates) crashed the
    text-embedding disk cache's key (UnicodeEncodeError)."""
    class Keyed:  # the tiny embedder, with the cache key a real model has
        cache_key = "tiny-random-test"

        def __getattr__(self, name):
            return getattr(tiny.embedder, name)

    bank = TextBank(Keyed(), cache_dir=tmp_path)
    assert bank.cache_dir is not None
    odd = "caf\udce9"
    first = bank.embed([(odd,), ("cafe",)])
    again = TextBank(Keyed(), cache_dir=tmp_path).embed([(odd,)])
    assert np.allclose(first[0], again[0]) and len(list(bank.cache_dir.glob("*.npy"))) == 2


def test_eval_names_the_image_and_both_sizes_when_masks_do_not_fit(tmp_path, scene):
    """Item 7: a prediction whose masks are not the size of the ground truth's image (EXIF rotation) was a raw
    IndexError; it is one line naming the image and both sizes."""
    from clipsam.testing import oracle_label_run

    (tmp_path / "photos").mkdir()
    Image.fromarray(scene.image).save(tmp_path / "photos" / "a.png")
    oracle_label_run(tmp_path / "photos", tmp_path / "out", scene)
    gt = json.loads((tmp_path / "out" / "annotations.json").read_text())
    for im in gt["images"]:
        im["height"], im["width"] = im["width"], im["height"]  # stored rotated
    for a in gt["annotations"]:
        a["segmentation"] = M.encode(M.decode(a["segmentation"]).T)
        a["bbox"] = [float(v) for v in M.bbox_xywh(a["segmentation"])]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "out" / "annotations.json"), str(tmp_path / "gt.json")])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "'a.png'" in text and "200x120" in text and "120x200" in text and "unexpected" not in text


@pytest.mark.parametrize("size", [(120, 200)])
def test_eval_of_matching_sizes_still_scores(tmp_path, scene, size):
    from clipsam.testing import oracle_label_run

    (tmp_path / "photos").mkdir()
    Image.fromarray(scene.image).save(tmp_path / "photos" / "a.png")
    oracle_label_run(tmp_path / "photos", tmp_path / "out", scene)
    ann = str(tmp_path / "out" / "annotations.json")
    res = CliRunner().invoke(app, ["eval", ann, ann, "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["miou"] == pytest.approx(1.0)


def _prompt_and_everything(seg, image):
    click = seg.segment_prompt(image, points=[[image.shape[1] // 3, image.shape[0] // 2]])
    every = seg.segment_everything(image)
    return ([r.rle["counts"] for r in click], [round(float(v), 6) for v in click.regions.predicted_iou],
            [(r.rle["counts"], r.label, r.parent_id) for r in every])


@pytest.mark.parametrize("warm", [False, True], ids=["first-use-in-threads", "models-built"])
def test_one_segmenter_shared_by_threads_gives_the_serial_results(warm):
    """Item 2: 4 threads x 20 images on one segmenter, first used by the threads themselves, get exactly what one
    thread gets. The SAM adapters shared one predictor through reset/restore, the embedding caches were unlocked,
    and the lazily built models could be built by several threads at once, interleaving their random weights."""
    from concurrent.futures import ThreadPoolExecutor

    from clipsam.testing import tiny_segmenter

    rng = np.random.default_rng(7)
    images = [(rng.random((48 + 4 * (k % 5), 64 + 4 * (k % 7), 3)) * 255).astype(np.uint8) for k in range(20)]
    serial = [_prompt_and_everything(tiny_segmenter(seed=3), im) for im in images]
    shared = tiny_segmenter(seed=3)
    if warm:  # models built before the threads start: what is left is the shared predictor and the caches
        _prompt_and_everything(shared, images[0][:32, :32])
    order = [k for _ in range(4) for k in rng.permutation(len(images))]  # every image 4 times, interleaved
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda k: (k, _prompt_and_everything(shared, images[k])), order))
    wrong = [k for k, result in got if result != serial[k]]
    assert not wrong, f"{len(wrong)} of {len(got)} results differ from the serial ones"


def test_adopting_another_model_never_serves_the_old_models_embedding(scene):
    """Item 3: the embedding cache was keyed by the image only, so after ``adopt()`` the old model's embedding came
    back for an image seen before."""
    from clipsam.testing import tiny_sam, tiny_segmenter

    seg = tiny_segmenter(seed=0)
    before = seg.segment_prompt(scene.image, points=[[60, 60]])
    seg.adopt(sam=tiny_sam(seed=5))
    after = seg.segment_prompt(scene.image, points=[[60, 60]])
    fresh = tiny_segmenter(seed=0)
    fresh.adopt(sam=tiny_sam(seed=5))
    expected = fresh.segment_prompt(scene.image, points=[[60, 60]])
    assert [r.rle for r in after] == [r.rle for r in expected]
    assert [r.rle for r in after] != [r.rle for r in before]
