"""The SAM 2.1 backend on the real Hiera-T architecture with random weights."""

import hashlib
import io

import numpy as np
import pytest
import torch

pytest.importorskip("sam2")

from clipsam import Segmenter  # noqa: E402
from clipsam import weights as W  # noqa: E402
from clipsam.models.sam2 import Sam2Proposer, build_sam2_model  # noqa: E402

PARAMS = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}


@pytest.fixture(scope="module")
def sam2_model():
    return build_sam2_model("sam2.1_hiera_t", seed=0)


@pytest.fixture(scope="module")
def proposer(sam2_model):
    return Sam2Proposer(sam2_model, "cpu", name="sam2.1-random")


@pytest.mark.slow
def test_generate_matches_stock_sam2_and_reuses_the_embedding(proposer, sam2_model, chelsea):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    stock = SAM2AutomaticMaskGenerator(sam2_model, output_mode="coco_rle", **PARAMS).generate(chelsea)
    emb = proposer.embed(chelsea)
    ours = proposer.generate(chelsea, emb, **PARAMS)
    assert len(ours) == len(stock) > 0
    assert [p.rle["counts"] for p in ours] == [s["segmentation"]["counts"] for s in stock]


@pytest.mark.parametrize("params, chunk_pixels", [
    ({"points_per_side": 7, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}, None),
    ({"points_per_side": 5, "points_per_batch": 10, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
      "box_nms_thresh": 0.9, "stability_score_offset": 0.5}, 300_000),  # batches and chunks that cut across points
    ({"points_per_side": 5, "multimask_output": False, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
      "mask_threshold": 0.5, "box_nms_thresh": 1.0}, 1),
    ({"point_grids": [np.random.default_rng(0).random((20, 2))], "points_per_side": None, "pred_iou_thresh": 0.05,
      "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}, None),
])
@pytest.mark.slow
def test_fast_generator_is_identical_to_stock_sam2(sam2_model, chelsea, params, chunk_pixels):
    """clipsam's SAM 2.1 generator (amg2): stock's RLEs, predicted IoUs, stability scores and points, in order."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    fast = Sam2Proposer(sam2_model, "cpu")
    if chunk_pixels:
        fast.chunk_pixels = chunk_pixels
    stock = SAM2AutomaticMaskGenerator(sam2_model, output_mode="coco_rle", **params).generate(chelsea)
    ours = fast.generate(chelsea, fast.embed(chelsea), **params)
    assert len(ours) == len(stock) > 0
    assert [p.rle["counts"] for p in ours] == [s["segmentation"]["counts"] for s in stock]
    assert [p.predicted_iou for p in ours] == [s["predicted_iou"] for s in stock]
    assert [p.stability_score for p in ours] == [s["stability_score"] for s in stock]
    assert [list(p.point_xy) for p in ours] == [s["point_coords"][0] for s in stock]


@pytest.mark.slow
def test_full_resolution_masks_are_stock_sam2s(sam2_model, chelsea):
    """At a processing size smaller than the photo, SAM 2.1's results are still stock's at the original size."""
    from PIL import Image
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from clipsam.core import masks as M

    big = np.asarray(Image.fromarray(chelsea).resize((902, 600), Image.Resampling.BICUBIC))
    params = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
    seg = Segmenter.from_models(Sam2Proposer(sam2_model, "cpu"), max_side=256, duplicate_iou=1.0, text_cache=False)
    stock = SAM2AutomaticMaskGenerator(sam2_model, output_mode="coco_rle", **params).generate(big)
    ours = seg.segment_everything(big, label=False, **params)
    assert len(ours) > 10 and {r.rle["counts"] for r in ours} == {s["segmentation"]["counts"] for s in stock}
    pred = SAM2ImagePredictor(sam2_model)
    pred.set_image(big)
    for kwargs in ({"points": [[301.5, 222.0]]}, {"box": [100.0, 50.0, 700.0, 500.0]}):
        masks, iou, low = pred.predict(point_coords=np.asarray(kwargs["points"]) if "points" in kwargs else None,
                                       point_labels=np.asarray([1]) if "points" in kwargs else None,
                                       box=np.asarray(kwargs["box"]) if "box" in kwargs else None,
                                       multimask_output="points" in kwargs)
        order = np.argsort(-iou, kind="stable")
        out = seg.segment_prompt(big, **kwargs)
        assert [r.rle for r in out] == [M.encode(masks[k].astype(bool)) for k in order]
        np.testing.assert_array_equal(out.low_res_logits, low[order])


@pytest.mark.slow
def test_prompts_through_the_segmenter(proposer, chelsea):
    seg = Segmenter.from_models(proposer, generator_params=PARAMS, text_cache=False)
    click = seg.segment_prompt(chelsea, points=[[200, 150]])
    assert len(click) == 3 and click.low_res_logits.shape == (3, 256, 256)
    assert [r.predicted_iou for r in click] == sorted((r.predicted_iou for r in click), reverse=True)
    again = seg.segment_prompt(chelsea, points=[[200, 150]], mask=click.low_res_logits[0])
    box = seg.segment_prompt(chelsea, box=[50, 20, 400, 280])
    assert len(again) == 1 and len(box) == 1 and box[0].rle["size"] == [300, 451]
    everything = seg.segment_everything(chelsea)
    assert len(everything) >= 1


def test_registry_download_builds_the_sam2_backend(sam2_model, tmp_path, monkeypatch):
    buf = io.BytesIO()
    torch.save({"model": sam2_model.state_dict()}, buf)  # the official SAM 2 checkpoint layout
    body = buf.getvalue()
    path = tmp_path / "sam2_test.pt"
    path.write_bytes(body)
    saved = dict(W.REGISTRY)
    try:
        W.register(W.Checkpoint(name="test-sam2", family="sam", arch="sam2.1_hiera_t", url="http://127.0.0.1:9/x.pt",
                                sha256=hashlib.sha256(body).hexdigest(), filename="test-sam2.pt",
                                extra={"backend": "sam2"}))
        W.import_file("test-sam2", path)
        from clipsam.models.build import build_proposer

        built = build_proposer("test-sam2", "cpu", download=False)
        assert isinstance(built, Sam2Proposer)
        for key, value in sam2_model.state_dict().items():
            assert torch.equal(built.model.state_dict()[key], value)
    finally:
        W.REGISTRY.clear()
        W.REGISTRY.update(saved)


def test_sam2_registry_entries():
    for name in ("sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large"):
        ckpt = W.get(name)
        assert ckpt.extra["backend"] == "sam2" and ckpt.url.endswith(f"/092824/{name}.pt")
    published = [n for n in W.REGISTRY if W.get(n).extra.get("backend") != "sam3"]  # SAM 3: pinned on first use
    assert np.all([len(W.get(n).sha256) == 64 for n in published]) and W.get("sam3").sha256 == ""


def test_fast_generator_decodes_a_few_prompts_a_call_on_a_cpu(sam2_model, chelsea, monkeypatch):
    """On a CPU SAM 2.1's decoder takes each generator batch CPU_DECODER_PROMPTS prompts a call (it copies the image
    embedding and the high-resolution features once per prompt); the proposals are those of one call per batch."""
    from clipsam.models import amg

    fast = Sam2Proposer(sam2_model, "cpu")
    emb = fast.embed(chelsea)
    params = {**PARAMS, "points_per_side": 5, "points_per_batch": 20}
    sizes: list[int] = []
    forward = sam2_model.sam_mask_decoder.forward

    def spy(*args, **kwargs):
        sizes.append(len(kwargs["sparse_prompt_embeddings"]))
        return forward(*args, **kwargs)

    monkeypatch.setattr(sam2_model.sam_mask_decoder, "forward", spy)
    few = fast.generate(chelsea, emb, **params)
    assert sizes == [8, 8, 4, 5] and max(sizes) == amg.CPU_DECODER_PROMPTS  # 25 points: batches of 20 and 5
    monkeypatch.setattr(amg, "CPU_DECODER_PROMPTS", 1000)
    sizes.clear()
    whole = fast.generate(chelsea, emb, **params)
    assert sizes == [20, 5]
    assert [p.rle["counts"] for p in few] == [p.rle["counts"] for p in whole]
    assert [p.predicted_iou for p in few] == [p.predicted_iou for p in whole]
