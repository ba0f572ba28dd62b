"""Full-resolution masks: the pipeline works at the processing size, the result is stock SAM's at the original size.

Stock SAM embeds the original image and upsamples its logits bilinearly to the original size before thresholding.
clipsam must give exactly those masks, not processing-size masks scaled up (4-pixel staircases on a 12 MP photo)."""

import numpy as np
import pytest
from segment_anything import SamAutomaticMaskGenerator, SamPredictor

from clipsam.core import masks as M
from clipsam.stages.fullres import FullRes
from clipsam.stages.prepare import prepare
from clipsam.testing import tiny_segmenter

GRID = {"points_per_side": 12, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}


@pytest.fixture(scope="module")
def big(chelsea):
    """A photo larger than the processing size (640 x 962 -> 128 px): every edge would be a 7.5-pixel staircase."""
    from PIL import Image

    return np.asarray(Image.fromarray(chelsea).resize((962, 640), Image.Resampling.BICUBIC))


@pytest.fixture(scope="module")
def seg():
    return tiny_segmenter(seed=3, max_side=128, duplicate_iou=1.0)


def _stock_predictor(seg, image):
    pred = SamPredictor(seg.proposer.model)
    pred.set_image(image)
    return pred


@pytest.mark.parametrize("params", [GRID, {**GRID, "points_per_side": 9, "points_per_batch": 20,
                                           "stability_score_offset": 0.5}])
@pytest.mark.slow
def test_everything_gives_stock_generators_masks_at_the_original_size(seg, big, params):
    stock = SamAutomaticMaskGenerator(seg.proposer.model, output_mode="coco_rle", **params).generate(big)
    ours = seg.segment_everything(big, label=False, **params)
    assert len(ours) > 20
    stock_counts = {s["segmentation"]["counts"] for s in stock}
    assert {r.rle["counts"] for r in ours} == stock_counts  # only exact duplicates merge (duplicate_iou=1.0)
    assert all(r.rle["size"] == [640, 962] for r in ours)


@pytest.mark.slow
def test_nearest_neighbour_scaling_is_what_full_resolution_false_gives(seg, big):
    """The old path, kept as an option: processing-size masks scaled up; they are not stock's."""
    fast = tiny_segmenter(seed=3, max_side=128, duplicate_iou=1.0, full_resolution=False)
    ours = fast.segment_everything(big, label=False, **GRID)
    stock = SamAutomaticMaskGenerator(seg.proposer.model, output_mode="coco_rle", **GRID).generate(big)
    stock_counts = {s["segmentation"]["counts"] for s in stock}
    assert len(ours) > 20 and not any(r.rle["counts"] in stock_counts for r in ours)
    # a staircase: every row run starts on the processing grid (~7.5 original pixels a step)
    assert all(r.rle["size"] == [640, 962] for r in ours)


@pytest.mark.parametrize("kwargs", [
    {"points": [[301.3, 182.8]]},
    {"points": [[301.3, 182.8], [800.0, 500.0]], "labels": [1, 0]},
    {"box": [200.5, 100.0, 900.0, 600.0]},
    {"points": [[550.0, 350.0]], "box": [200.5, 100.0, 900.0, 600.0], "multimask": True},
])
def test_prompts_give_stock_predictors_masks_at_the_original_size(seg, big, kwargs):
    pred = _stock_predictor(seg, big)
    pts = np.asarray(kwargs["points"]) if "points" in kwargs else None
    lbl = np.asarray(kwargs.get("labels", [1] * len(pts))) if pts is not None else None
    box = np.asarray(kwargs["box"]) if "box" in kwargs else None
    multimask = kwargs.get("multimask", pts is not None and len(pts) == 1 and box is None)
    masks, iou, low = pred.predict(point_coords=pts, point_labels=lbl, box=box, multimask_output=multimask)
    order = np.argsort(-iou, kind="stable")
    out = seg.segment_prompt(big, **kwargs)
    assert len(out) == len(masks)
    for r, k in zip(out, order, strict=True):
        assert r.rle == M.encode(masks[k])
    np.testing.assert_array_equal(out.low_res_logits, low[order])


@pytest.mark.parametrize("budget", [None, 0])  # logits kept, or (past the budget) the prompt decoded again
def test_masks_the_stages_prompt_for_come_back_as_stocks(seg, big, budget):
    """Parts, refinement and guided prompts go through ``work.sam(proposer)``: a mask they keep at the processing
    size is given at the original size from SAM's logits, exactly as stock SAM makes it for the same prompt."""
    work = prepare(big, 128, full_resolution=True)
    if budget is not None:
        work.fullres.budget = budget
    emb = seg.caches.sam.get(work, seg.proposer)
    sam = work.sam(seg.proposer)
    pred = _stock_predictor(seg, big)
    for xy in ([[30.0, 40.0]], [[100.5, 20.25]]):  # processing-size pixels, as the stages give them
        out = sam.predict(emb, point_coords=np.asarray(xy), point_labels=np.asarray([1]), multimask_output=True)
        scale = np.array([big.shape[1] / work.shape[1], big.shape[0] / work.shape[0]])
        masks, iou, _ = pred.predict(point_coords=np.asarray(xy) * scale, point_labels=np.asarray([1]))
        order = np.argsort(-iou, kind="stable")
        for m, k in zip(out.masks, order, strict=True):
            assert m.shape == work.shape
            assert work.fullres.full(M.encode(m)) == M.encode(masks[k])
    box = sam.predict(emb, box=np.asarray([10.0, 10.0, 90.0, 70.0]), multimask_output=False)
    assert work.fullres.full(M.encode(box.masks[0]))["size"] == [640, 962]
    kind = "redecoded" if budget == 0 else "upsampled"
    assert getattr(work.fullres, kind) == 7 and work.fullres.nearest == 0


def test_masks_no_proposer_made_are_scaled_nearest_neighbour(big):
    store = FullRes(big.shape[:2])
    small = np.zeros((85, 128), dtype=bool)
    small[10:40, 20:70] = True
    assert store.full(M.encode(small)) == M.resize(M.encode(small), big.shape[:2]) and store.nearest == 1


class _CatEverywhere:
    """Every crop is a cat (texts that say cat point one way, the rest the other): labels for every region, so
    that refinement and parts run."""

    name, cache_key, image_size, logit_scale = "cat-everywhere", None, 32, 100.0

    def embed_images(self, crops):
        return np.tile(np.array([1.0, 0.0], dtype=np.float32), (len(crops), 1))

    def embed_texts(self, texts):
        return np.array([[1.0, 0.0] if " cat" in f" {t}" else [0.0, 1.0] for t in texts], dtype=np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("call", ["refine", "parts"])
def test_refined_masks_and_parts_come_from_sams_logits(seg, big, monkeypatch, call):
    from clipsam import Segmenter
    from clipsam.stages import fullres

    cats = Segmenter.from_models(seg.proposer.model, _CatEverywhere(), device="cpu", max_side=128, text_cache=False)
    monkeypatch.setattr(fullres.M, "resize", lambda *a: pytest.fail("a SAM mask was scaled nearest neighbour"))
    calls = []
    predict = cats.proposer.predict
    monkeypatch.setattr(cats.proposer, "predict", lambda *a, **k: calls.append(1) or predict(*a, **k))
    if call == "refine":
        out = cats.segment(big, "cat", taxonomy="coco", refine=True, **GRID)
    else:
        out = cats.segment_everything(big, taxonomy="coco", part_points=3, **GRID)
    assert len(calls) >= 3  # a box per returned mask, or clicks inside the objects
    assert len(out) and all(r.rle["size"] == [640, 962] for r in out)
