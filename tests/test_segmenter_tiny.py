"""The real SAM and open_clip architectures at tiny size, random weights: wiring, shapes, equivalence, errors."""

import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from segment_anything import SamAutomaticMaskGenerator

from clipsam import Segmenter
from clipsam.core import masks as M
from clipsam.errors import ModelError, PromptError, WeightsMissingError
from clipsam.testing import TINY_GENERATOR_PARAMS, tiny_clip, tiny_sam, tiny_segmenter


def test_everything_returns_full_resolution_rles(tiny, chelsea):
    seg = tiny.segment_everything(chelsea, points_per_side=4, box_nms_thresh=1.0)
    assert len(seg) >= 1 and seg.image_size == chelsea.shape[:2]
    for r in seg:
        assert r.rle["size"] == list(chelsea.shape[:2]) and r.area == M.area(r.rle) > 0
        assert r.label is None and r.kind == "unknown"  # no taxonomy: not labelled
    assert seg.models == {"sam": "tiny-random", "clip": "tiny-random"}


@pytest.mark.parametrize("full_resolution, seen", [(True, (300, 451, 3)), (False, (85, 128, 3))])
def test_processing_size_is_bounded_but_masks_come_back_full_size(chelsea, full_resolution, seen):
    """SAM sees the original image as stock SAM does (or, without full resolution, the processing-size pixels);
    the masks come back at the original size either way."""
    small = tiny_segmenter(max_side=128, full_resolution=full_resolution)
    calls = []
    original_embed = small.proposer.embed
    small.proposer.embed = lambda image, **kw: calls.append((image.shape, kw)) or original_embed(image, **kw)
    seg = small.segment_everything(chelsea)
    assert calls == [(seen, {"work_size": (85, 128)} if full_resolution else {})]
    assert len(seg) and all(r.rle["size"] == [300, 451] for r in seg)


def test_same_seed_same_result(chelsea):
    a = tiny_segmenter(seed=1).segment_everything(chelsea, taxonomy="coco")
    b = tiny_segmenter(seed=1).segment_everything(chelsea, taxonomy="coco")
    assert a == b and len(a) >= 1


def test_generator_matches_stock_sam_exactly(chelsea):
    params = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
    model = tiny_sam(seed=2)
    stock = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **params).generate(chelsea)
    seg = Segmenter.from_models(model, device="cpu", max_side=None)
    ours = seg.proposer.generate(chelsea, seg.proposer.embed(chelsea), **params)
    assert len(ours) == len(stock) > 0
    assert [p.rle["counts"] for p in ours] == [s["segmentation"]["counts"] for s in stock]
    np.testing.assert_allclose([p.predicted_iou for p in ours], [s["predicted_iou"] for s in stock], rtol=1e-6)


def test_embedding_is_computed_once_per_image(chelsea):
    seg = tiny_segmenter()
    count = {"n": 0}
    original = seg.proposer.embed

    def counting(image):
        count["n"] += 1
        return original(image)

    seg.proposer.embed = counting
    seg.segment_prompt(chelsea, points=[[100, 100]])
    seg.segment_prompt(chelsea, box=[10, 10, 200, 150])
    seg.segment_everything(chelsea)
    assert count["n"] == 1
    seg.segment_prompt(chelsea[:, ::-1].copy(), points=[[100, 100]])
    assert count["n"] == 2


def test_prompts(tiny, chelsea):
    one = tiny.segment_prompt(chelsea, points=[[200, 150]])
    assert len(one) == 3  # a single click is ambiguous: three masks
    ious = [r.predicted_iou for r in one]
    assert ious == sorted(ious, reverse=True) and one.best.predicted_iou == max(ious)
    assert one.low_res_logits.shape == (3, 16, 16)
    assert all(r.kind == "prompt" and r.rle["size"] == [300, 451] for r in one)
    combo = tiny.segment_prompt(chelsea, points=[[200, 150], [20, 20]], labels=[1, 0], box=[100, 50, 300, 250])
    assert len(combo) == 1
    again = tiny.segment_prompt(chelsea, points=[[200, 150]], mask=one.low_res_logits[0])
    assert len(again) == 1
    forced = tiny.segment_prompt(chelsea, box=[100, 50, 300, 250], multimask=True)
    assert len(forced) == 3


@pytest.mark.parametrize("kwargs, pattern", [
    ({}, "at least one of"),
    ({"points": [[1000, 10]]}, "outside"),
    ({"points": [[10, 10]], "labels": [1, 1]}, "1 points but 2 labels"),
    ({"points": [[10, 10]], "labels": [2]}, "1 \\(foreground\\) or 0"),
    ({"points": [1, 2, 3]}, "\\(N, 2\\)"),
    ({"labels": [1]}, "without points"),
    ({"box": [50, 50, 10, 10]}, "x0 < x1"),
    ({"box": [1, 2, 3]}, "4 numbers"),
    ({"box": [500, 400, 600, 500]}, "outside"),
    ({"points": [[10, 10]], "mask": np.zeros((64, 64))}, "low-resolution logits"),
])
def test_bad_prompts_are_refused_clearly(tiny, chelsea, kwargs, pattern):
    with pytest.raises(PromptError, match=pattern):
        tiny.segment_prompt(chelsea, **kwargs)


def test_text_query_and_refinement(chelsea):
    seg = tiny_segmenter(negatives=(), vocabulary=False, min_confidence=0.0)
    result = seg.segment(chelsea, "cat", refine=True)
    assert len(result) >= 1 and {r.label for r in result} == {"cat"}
    assert all(r.label_path == ("cat",) and r.kind == "object" for r in result)
    assert result.embeddings.shape == (len(result), 16)
    from clipsam.core.crops import crop_region

    first = result[0]  # the embedding is that of the refined mask's crop (at the processing size = original here)
    crop = crop_region(chelsea, first.mask(), first.bbox_xywh, size=seg.embedder.image_size)
    np.testing.assert_allclose(result.embeddings[0], seg.embedder.embed_images([crop])[0], atol=1e-5)
    encoded = seg.text_bank.encoded_texts
    seg.segment(chelsea, "cat")
    assert seg.text_bank.encoded_texts == encoded  # text embeddings reused
    with pytest.raises(PromptError, match="empty"):
        seg.segment(chelsea, " , ")
    from clipsam.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown generator parameter"):  # before SAM's encoder runs
        seg.segment(chelsea, "cat", points_per_sid=3)


def test_from_models_wraps_user_built_models(chelsea):
    model, preprocess, tokenizer = tiny_clip(seed=5)
    seg = Segmenter.from_models(tiny_sam(seed=5), model, preprocess=preprocess, tokenizer=tokenizer, device="cpu",
                                generator_params=TINY_GENERATOR_PARAMS, text_cache=False, negatives=(),
                                vocabulary=False, min_confidence=0.0)
    assert len(seg.segment(chelsea, "cat")) >= 1
    feats = seg.embedder.embed_images([chelsea[:32, :32]] * 3)
    assert feats.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ModelError, match="preprocess and tokenizer"):
        Segmenter.from_models(clip=model)
    with pytest.raises(ModelError, match="Sam model"):
        Segmenter.from_models(sam=torch.nn.Linear(2, 2))


def test_registry_models_without_weights_explain_how_to_get_them(chelsea, monkeypatch):
    monkeypatch.setenv("CLIPSAM_OFFLINE", "1")
    seg = Segmenter(device="cpu")
    with pytest.raises(WeightsMissingError, match="clipsam weights import vit_b"):
        seg.segment_everything(chelsea)
    with pytest.raises(ModelError, match="choose one of"):
        _ = Segmenter(sam="vit_q").proposer
    with pytest.raises(ModelError, match="is a SAM checkpoint"):
        _ = Segmenter(clip="vit_b").embedder
    with pytest.raises(ValueError, match="min_confidence"):
        Segmenter(min_confidence=2)


@pytest.mark.parametrize("params", [
    {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0},
    {"points_per_side": 7, "points_per_batch": 10, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
    {"points_per_side": 8, "points_per_batch": 16, "pred_iou_thresh": 0.1, "stability_score_thresh": 0.5,
     "box_nms_thresh": 0.5},
])
@pytest.mark.parametrize("chunk_pixels", [1, 10_000_000])
def test_fast_generator_is_identical_to_stock(chelsea, params, chunk_pixels):
    from clipsam.models import amg
    from clipsam.models.sam import SamProposer

    model = tiny_sam(seed=4)
    stock = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **params).generate(chelsea)
    proposer = SamProposer(model, "cpu")
    emb = proposer.embed(chelsea)
    fast = amg.generate(model, emb.features, emb.original_size, emb.input_size, chunk_pixels=chunk_pixels, **params)
    assert len(fast) == len(stock)
    assert [p.rle["counts"] for p in fast] == [s["segmentation"]["counts"] for s in stock]
    assert [p.predicted_iou for p in fast] == [s["predicted_iou"] for s in stock]
    assert [p.stability_score for p in fast] == [s["stability_score"] for s in stock]
    assert [list(p.point_xy) for p in fast] == [s["point_coords"][0] for s in stock]
    slow = SamProposer(model, "cpu", fast=False).generate(chelsea, emb, **params)
    assert [p.rle["counts"] for p in slow] == [p.rle["counts"] for p in fast]


def test_fast_generator_decodes_a_few_prompts_a_call_on_a_cpu(chelsea, monkeypatch):
    """On a CPU the decoder takes each generator batch CPU_DECODER_PROMPTS prompts a call (its per-prompt copies of
    the image embedding then fit in cache); the proposals are those of one call per batch, exactly."""
    from clipsam.models import amg
    from clipsam.models.sam import SamProposer

    model = tiny_sam(seed=4)
    emb = SamProposer(model, "cpu").embed(chelsea)
    params = {"points_per_side": 6, "points_per_batch": 20, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    sizes: list[int] = []
    forward = model.mask_decoder.forward

    def spy(*args, **kwargs):
        sizes.append(len(kwargs["sparse_prompt_embeddings"]))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.mask_decoder, "forward", spy)
    few = amg.generate(model, emb.features, emb.original_size, emb.input_size, **params)
    assert sizes == [8, 8, 4, 8, 8] and max(sizes) == amg.CPU_DECODER_PROMPTS  # 36 points: batches of 20 and 16
    monkeypatch.setattr(amg, "CPU_DECODER_PROMPTS", 1000)
    sizes.clear()
    whole = amg.generate(model, emb.features, emb.original_size, emb.input_size, **params)
    assert sizes == [20, 16]
    assert [p.rle["counts"] for p in few] == [p.rle["counts"] for p in whole]
    assert [p.predicted_iou for p in few] == [p.predicted_iou for p in whole]


def test_fast_generator_falls_back_to_stock_for_crop_layers(chelsea):
    from clipsam.models.sam import SamProposer

    model = tiny_sam(seed=4)
    params = {"points_per_side": 4, "crop_n_layers": 1, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    stock = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **params).generate(chelsea)
    ours = SamProposer(model, "cpu").generate(chelsea, **params)
    assert [p.rle["counts"] for p in ours] == [s["segmentation"]["counts"] for s in stock]


def test_fast_speed_halves_the_default_grid_and_is_checked():
    from clipsam.errors import ConfigError

    assert Segmenter("vit_b", speed="fast").generator_params == {"points_per_side": 16}
    assert Segmenter("vit_b", speed="fast", generator_params={"points_per_side": 24}).generator_params == {
        "points_per_side": 24}
    assert Segmenter("vit_b").generator_params == {} and Segmenter("vit_b", speed="fast").config()["speed"] == "fast"
    assert Segmenter("vit_b", speed="fast").precision == "bf16"  # autocast on CUDA; CPU runs stay fp32
    with pytest.raises(ConfigError, match="speed must be one of exact, fast"):
        Segmenter("vit_b", speed="turbo")


def test_stage_clock_counts_time_once(monkeypatch):
    """A stage's seconds exclude the stages timed inside it (labelling embeds pieces' crops: CLIP's time is
    ``embed_regions``'s), and a stage run twice adds up."""
    from clipsam.pipelines import points
    from clipsam.testing import oracle_segmenter

    pipe = points.PointPipeline(oracle_segmenter())
    ticks = iter(range(100))
    monkeypatch.setattr(points.time, "perf_counter", lambda: float(next(ticks)))
    with pipe.timed("label"):  # 0 .. 5
        with pipe.timed("embed_regions"):  # 1 .. 2
            pass
        with pipe.timed("embed_regions"):  # 3 .. 4
            pass
    assert pipe.stats["seconds"] == {"embed_regions": 2.0, "label": 3.0}


def test_last_stats_time_every_stage_of_a_labelled_call(chelsea):
    seg = tiny_segmenter(taxonomy="everyday")
    start = time.perf_counter()
    seg.segment_everything(chelsea)
    wall = time.perf_counter() - start
    seconds = seg.last_stats["seconds"]
    assert {"prepare_and_embed", "propose", "nest", "embed_regions", "label", "assemble"} <= set(seconds)
    assert all(v >= 0 for v in seconds.values()) and sum(seconds.values()) <= wall
    free = tiny_segmenter(negatives=(), vocabulary=False, min_confidence=0.0)
    assert len(free.segment(chelsea, "cat", refine=True)) >= 1
    assert {"embed_regions", "label", "refine"} <= set(free.last_stats["seconds"])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 1024), st.integers(1, 1024), st.integers(1, 3000), st.integers(1, 3000), st.integers(0, 9))
def test_upsampling_computes_only_kept_pixels_and_equals_stocks_bit_for_bit(ih, iw, oh, ow, seed):
    """amg.postprocess_masks skips the rows and columns that stock's crop throws away and the resize to the same
    size: the logits are stock Sam.postprocess_masks' to the bit, for any input and original size."""
    from segment_anything.modeling import Sam

    from clipsam.models import amg

    side = max(ih, iw)
    ih, iw = ih * 1024 // side or 1, iw * 1024 // side or 1  # SAM's input size: the long side is 1024
    same = seed % 2 == 0  # half the cases: the original size is the input size (no last resize)
    oh, ow = (ih, iw) if same else (oh, ow)
    low = torch.randn(2, 1, 256, 256, generator=torch.Generator().manual_seed(seed)) * 4
    model = type("M", (), {"image_encoder": type("E", (), {"img_size": 1024})()})()
    stock = Sam.postprocess_masks(model, low, (ih, iw), (oh, ow))
    assert torch.equal(amg.postprocess_masks(low, 1024, (ih, iw), (oh, ow)), stock)


def test_clip_runs_a_few_crops_and_texts_a_pass_on_a_cpu(monkeypatch):
    """On a CPU CLIP's towers see CPU_IMAGE_BATCH crops and CPU_TEXT_BATCH texts a forward pass (their activations
    then stay in cache); the embeddings are those of one large batch. A batch size the caller sets is kept."""
    from clipsam.models import clip as C

    model, preprocess, tokenizer = tiny_clip(seed=5)
    emb = C.ClipEmbedder(model, preprocess, tokenizer, "cpu")
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (20, 30, 3), dtype=np.uint8) for _ in range(10)]
    texts = [f"a photo of thing {i}." for i in range(70)]
    seen: list[tuple[str, int]] = []
    image, text = model.encode_image, model.encode_text
    monkeypatch.setattr(model, "encode_image", lambda x: seen.append(("image", len(x))) or image(x))
    monkeypatch.setattr(model, "encode_text", lambda t: seen.append(("text", len(t))) or text(t))
    few_crops, few_texts = emb.embed_images(crops), emb.embed_texts(texts)
    assert [n for k, n in seen if k == "image"] == [C.CPU_IMAGE_BATCH] * 2 + [10 - 2 * C.CPU_IMAGE_BATCH]
    assert [n for k, n in seen if k == "text"] == [C.CPU_TEXT_BATCH] * 2 + [70 - 2 * C.CPU_TEXT_BATCH]
    monkeypatch.setattr(C, "CPU_TEXT_BATCH", 1000)
    big = C.ClipEmbedder(model, preprocess, tokenizer, "cpu", batch_size=64)
    seen.clear()
    np.testing.assert_allclose(big.embed_images(crops), few_crops, rtol=0, atol=1e-6)
    np.testing.assert_allclose(big.embed_texts(texts), few_texts, rtol=0, atol=1e-6)
    assert seen == [("image", 10), ("text", 70)]
