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


def test_generate_matches_stock_sam2_and_reuses_the_embedding(proposer, sam2_model, chelsea):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    stock = SAM2AutomaticMaskGenerator(sam2_model, output_mode="coco_rle", **PARAMS).generate(chelsea)
    emb = proposer.embed(chelsea)
    ours = proposer.generate(chelsea, emb, **PARAMS)
    assert len(ours) == len(stock) > 0
    assert [p.rle["counts"] for p in ours] == [s["segmentation"]["counts"] for s in stock]


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
