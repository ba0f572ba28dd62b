"""ONNX Runtime for SAM 1 and CLIP on a CPU (issue 25): the same masks and labels as PyTorch on the tiny real
architectures, exports cached and atomic, clear refusals."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from clipsam import Segmenter  # noqa: E402
from clipsam.errors import ConfigError, ModelError  # noqa: E402


@pytest.fixture(scope="module")
def export_home(tmp_path_factory):
    """One CLIPSAM_HOME for the module: the tiny models are exported once (a few seconds each), then cached."""
    return tmp_path_factory.mktemp("onnx_home")


@pytest.fixture(autouse=True)
def _shared_exports(_isolated_home, export_home, monkeypatch):
    monkeypatch.setenv("CLIPSAM_HOME", str(export_home))


#: The tiny CLIP is sure of nothing: with no threshold and no background labels every region gets a real label, so
#: that labels can be compared at all.
ANY_LABEL = {"min_confidence": 0.0, "part_confidence": 0.0, "negatives": ()}


def _pair(**kw):
    common = {"device": "cpu", "text_cache": False, "taxonomy": "everyday", **ANY_LABEL, **kw}
    return Segmenter("tiny-random", "tiny-random", **common), Segmenter("tiny-random", "tiny-random",
                                                                       runtime="onnx", **common)


@pytest.fixture(scope="module")
def pair(export_home):
    os.environ["CLIPSAM_HOME"] = str(export_home)  # the module fixture runs before the per-test home is set
    return _pair()


def _image(h=120, w=160, seed=0):
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 40, np.uint8)
    for _ in range(12):  # blocks of colour: a tiny SAM then finds many different masks
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        img[y:y + rng.integers(8, 40), x:x + rng.integers(8, 50)] = rng.integers(0, 255, 3)
    return img


def _same(a, b, min_share=0.95):
    """Every mask of *b* identical to *a*'s but for float rounding at SAM's threshold: at least *min_share* of the
    masks identical, every other one at IoU >= 0.999 with its counterpart (on these images: a pixel or two of a
    full-resolution mask); the labels the same, region for region."""
    from clipsam.core import masks as M

    assert len(a.regions) == len(b.regions) > 0
    same = sum(x.rle == y.rle for x, y in zip(a.regions, b.regions, strict=True))
    assert same / len(a.regions) >= min_share, (same, len(a.regions))
    for x, y in zip(a.regions, b.regions, strict=True):
        if x.rle != y.rle:
            assert M.iou_matrix([x.rle], [y.rle])[0, 0] >= 0.999
    assert [r.label for r in a.regions] == [r.label for r in b.regions]
    return same


def test_everything_masks_and_labels_as_pytorch(pair):
    torch_seg, onnx_seg = pair
    img = _image()
    a = torch_seg.segment_everything(img, points_per_side=16, box_nms_thresh=1.0)  # NMS off: every mask
    b = onnx_seg.segment_everything(img, points_per_side=16, box_nms_thresh=1.0)
    assert onnx_seg.runtimes() == {"sam": "onnx", "clip": "onnx"} and torch_seg.runtimes()["sam"] == "torch"
    assert len(a.regions) >= 20 and len({r.label for r in a.regions}) >= 2
    _same(a, b)
    assert [r.score for r in a.regions] == pytest.approx([r.score for r in b.regions], abs=1e-4)
    label = a.regions[0].label  # a query for a label the tiny models give
    _same(torch_seg.segment(img, label, points_per_side=16, box_nms_thresh=1.0),
          onnx_seg.segment(img, label, points_per_side=16, box_nms_thresh=1.0))


def test_full_resolution_and_stock_generator_as_pytorch():
    big = _image(300, 420, seed=3)  # over max_side: masks at full resolution from SAM's logits
    for gen in ({"box_nms_thresh": 1.0}, {"crop_n_layers": 1}):  # clipsam's fast generator; stock's generator
        a = Segmenter("tiny-random", "tiny-random", device="cpu", text_cache=False, max_side=200)
        b = Segmenter("tiny-random", "tiny-random", device="cpu", text_cache=False, max_side=200, runtime="onnx")
        _same(a.segment_everything(big, **gen), b.segment_everything(big, **gen))


def test_prompts_as_pytorch(pair):
    torch_seg, onnx_seg = pair
    img = _image(seed=1)
    prompts = [{"points": [[40, 30]]}, {"points": [[40, 30], [100, 80]], "labels": [1, 0]},
               {"box": [10, 10, 90, 70]}, {"points": [[50, 40]], "box": [10, 10, 90, 70]}]
    for p in prompts:
        a, b = torch_seg.segment_prompt(img, **p), onnx_seg.segment_prompt(img, **p)
        _same(a, b, min_share=1.0)
        np.testing.assert_allclose(a.low_res_logits, b.low_res_logits, atol=1e-3)
    # a prior mask alone (no sparse prompt): the PyTorch decoder answers it, on the ONNX image embedding
    prior = torch_seg.segment_prompt(img, points=[[40, 30]]).low_res_logits[0]
    _same(torch_seg.segment_prompt(img, mask=prior), onnx_seg.segment_prompt(img, mask=prior), min_share=1.0)


def test_clip_towers_as_pytorch(pair):
    torch_seg, onnx_seg = pair
    texts = ["a dog", "a cat on a sofa", "the sky"] * 40  # more than one batch of the text tower
    np.testing.assert_allclose(torch_seg.embedder.embed_texts(texts), onnx_seg.embedder.embed_texts(texts),
                               atol=1e-5)
    crops = [_image(32, 32, seed=s) for s in range(70)]  # more than one batch of crops (64)
    np.testing.assert_allclose(torch_seg.embedder.embed_images(crops), onnx_seg.embedder.embed_images(crops),
                               atol=1e-5)


def test_cliplike_world_labels_unchanged_with_onnx_sam():
    """The CLIP-like world's labels over the tiny SAM's every mask, everything and a query: the same label for
    every region."""
    from clipsam.models.build import build_proposer
    from clipsam.testing.world import CLIPLikeEmbedder, CLIPLikeWorld

    world = CLIPLikeWorld(11)  # a seed of its own
    scene = world.scene(0)
    embedder = CLIPLikeEmbedder(world)
    embedder.scene = scene
    grid = {"points_per_side": 16, "box_nms_thresh": 1.0}
    everything = []
    for runtime in ("torch", "auto"):  # auto: the world's CLIP is numpy, nothing to export ('onnx' refuses it)
        seg = Segmenter.from_models(build_proposer("tiny-random", "cpu"), embedder, device="cpu", **ANY_LABEL,
                                    taxonomy=world.taxonomy, text_cache=False, runtime=runtime)
        assert seg.runtimes() == {"sam": "torch" if runtime == "torch" else "onnx", "clip": "torch"}
        everything.append(seg.segment_everything(scene.image, **grid))
    _same(*everything)  # the random masks are background to the world: 'unknown', the same on both runtimes


def test_user_model_is_not_changed_and_threads_get_what_they_would_alone(pair):
    from clipsam.models.tiny import tiny_clip, tiny_sam

    sam = tiny_sam(0)
    clip, preprocess, tokenizer = tiny_clip(0)
    encoder, towers = sam.image_encoder, type(clip.encode_image)
    seg = Segmenter.from_models(sam, clip, preprocess=preprocess, tokenizer=tokenizer, device="cpu",
                                runtime="onnx", text_cache=False, taxonomy="everyday")
    assert sam.image_encoder is encoder and type(clip.encode_image) is towers  # the user's modules are theirs
    assert seg.runtimes() == {"sam": "onnx", "clip": "onnx"}
    images = [_image(seed=s) for s in range(4)]
    alone = [seg.segment_prompt(im, points=[[60, 50]]).to_json() for im in images]
    got: dict[int, str] = {}

    def work(i: int) -> None:
        got[i] = seg.segment_prompt(images[i % 4], points=[[60, 50]]).to_json()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(8)] == alone * 2


def test_exports_are_cached_by_weights_and_atomic(export_home, monkeypatch):
    from clipsam.models import onnx as O
    from clipsam.models.build import build_proposer

    build_proposer("tiny-random", "cpu", runtime="onnx")  # cached by now (or exported here)
    before = sorted(p.name for p in (export_home / "onnx").iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in (export_home / "onnx").rglob("model.onnx")}
    assert build_proposer("tiny-random", "cpu", runtime="onnx").runtime == "onnx"
    assert {p: p.stat().st_mtime_ns for p in (export_home / "onnx").rglob("model.onnx")} == stamps  # not again

    def killed(module, args, path, *rest):  # an export that dies after writing part of its file
        path.write_bytes(b"\x08\x07partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(O, "_export", killed)
    with pytest.raises(KeyboardInterrupt):
        build_proposer("tiny-random", "cpu", runtime="onnx", seed=5)  # other weights: a new export
    assert sorted(p.name for p in (export_home / "onnx").iterdir()) == before  # nothing half-written left
    stale = export_home / "onnx" / ".sam-image-encoder-left-by-a-kill"
    stale.mkdir()
    old = time.time() - 7 * 3600
    os.utime(stale, (old, old))

    def broken(module, args, path, *rest):
        raise RuntimeError("Unsupported operator aten::foo\nmore lines")

    monkeypatch.setattr(O, "_export", broken)
    with pytest.raises(ModelError, match="^exporting sam-image-encoder to ONNX failed: RuntimeError: "
                                         "Unsupported operator aten::foo$"):
        build_proposer("tiny-random", "cpu", runtime="onnx", seed=6)
    assert not stale.exists()  # a killed process's leftovers are removed on the next export
    auto = build_proposer("tiny-random", "cpu", runtime="auto", seed=6)  # auto: PyTorch, with a warning logged
    assert auto.runtime == "torch"


def test_runtime_refusals(monkeypatch):
    with pytest.raises(ConfigError, match="runtime must be one of torch, onnx, auto"):
        Segmenter("tiny-random", "tiny-random", runtime="tensorrt")
    with pytest.raises(ConfigError, match="CPU path"):
        Segmenter("tiny-random", "tiny-random", device="cuda", runtime="onnx")
    with pytest.raises(ConfigError, match="SAM 2.1 .* has no ONNX export"):
        Segmenter("tiny-random-sam2", "tiny-random", runtime="onnx")
    seg = Segmenter("tiny-random-sam3", "tiny-random", device="cpu", runtime="auto", text_cache=False)
    assert seg.proposer is not None and seg.runtimes() == {"sam": "torch"}  # SAM 3: PyTorch under auto

    class Custom:  # a user's proposer: nothing to export
        name = "custom"

        def embed(self, image):
            return image

        def predict(self, embedding, **kw):
            raise NotImplementedError

        def generate(self, image, embedding=None, **params):
            return []

    with pytest.raises(ConfigError, match="custom has no ONNX export"):
        Segmenter.from_models(Custom(), device="cpu", runtime="onnx")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs onnxruntime \(pip install 'clipsam\[onnx\]'\)"):
        _ = Segmenter("tiny-random", "tiny-random", device="cpu", runtime="onnx", text_cache=False).proposer
    assert Segmenter("tiny-random", "tiny-random", device="cpu", runtime="auto").runtimes() == {}
    assert Segmenter("tiny-random", "tiny-random", device="cpu", runtime="auto").proposer.runtime == "torch"


def test_cli_runtime_and_weights_export(tmp_path, export_home):
    from typer.testing import CliRunner

    from clipsam.cli import app

    img = tmp_path / "blocks.png"
    from PIL import Image

    Image.fromarray(_image(seed=2)).save(img)
    runner = CliRunner()
    res = runner.invoke(app, ["segment", str(img), "--points", "40,30", "--sam", "tiny-random", "--clip",
                              "tiny-random", "--runtime", "onnx", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["regions"]
    res = runner.invoke(app, ["weights", "export", "tiny-random", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)["exports"]
    assert {r["part"] for r in rows} == {"sam-image-encoder", "sam-mask-decoder", "clip-image", "clip-text"}
    assert all(os.path.isfile(r["path"]) and r["path"].startswith(str(export_home)) for r in rows)
    bad = runner.invoke(app, ["segment", str(img), "--points", "40,30", "--sam", "tiny-random", "--runtime", "gpu"])
    assert bad.exit_code != 0 and "--runtime must be one of torch, onnx, auto" in bad.output
    assert "Traceback" not in bad.output


def test_only_the_decoder_keeps_a_memory_arena_and_it_sees_a_few_prompts_a_call(pair):
    """ONNX Runtime's CPU arena keeps the largest call's buffers for the life of the session: 14 GB resident for
    ViT-B's decoder at 64 prompts a call. Only the decoder, called many times, keeps one (without it every call
    faults in fresh pages), and it never sees more than CPU_DECODER_PROMPTS prompts a call, whatever the caller
    sends: 20 prompts go as 8, 8 and 4, with the logits and IoUs of one call."""
    from clipsam.models.amg import CPU_DECODER_PROMPTS
    from clipsam.models.onnx import graphs

    found = graphs(pair[1].proposer) + graphs(pair[1].embedder)
    assert {g.part for g in found} == {"sam-image-encoder", "sam-mask-decoder", "clip-image", "clip-text"}
    assert {g.part for g in found if g.session.get_session_options().enable_cpu_mem_arena} == {"sam-mask-decoder"}
    sam = pair[1].proposer.model
    decoder, graph = sam.mask_decoder, sam.mask_decoder.graph
    torch.manual_seed(0)
    with torch.inference_mode():
        emb = torch.randn(1, decoder.torch_decoder.transformer_dim, *sam.prompt_encoder.image_embedding_size)
        points = (torch.rand(20, 1, 2) * sam.image_encoder.img_size, torch.ones(20, 1, dtype=torch.int))
        sparse, dense = sam.prompt_encoder(points=points, boxes=None, masks=None)
        pe = sam.prompt_encoder.get_dense_pe()
        one = graph(emb, pe, sparse, dense)
        sizes = []

        def spy(*tensors):
            sizes.append(tensors[2].shape[0])
            return graph(*tensors)

        decoder.graph = spy
        try:
            masks, iou = decoder(emb, pe, sparse, dense, True)
        finally:
            decoder.graph = graph
    assert sizes == [CPU_DECODER_PROMPTS, CPU_DECODER_PROMPTS, 20 - 2 * CPU_DECODER_PROMPTS]
    torch.testing.assert_close(masks, one[0][:, 1:], rtol=0, atol=1e-6)
    torch.testing.assert_close(iou, one[1][:, 1:], rtol=0, atol=1e-6)


def test_fast_speed_runs_clips_image_tower_in_int8(pair, export_home):
    """``speed="fast"`` on ONNX Runtime: CLIP's image tower quantised to int8 once, beside its export (no temporary
    file left); the text tower and its embeddings stay the exact path's; crops embed as fp32 does but for
    quantisation noise; masks are the same and labels nearly so."""
    from clipsam.models.onnx import graphs

    exact = pair[1]
    fast = Segmenter("tiny-random", "tiny-random", runtime="onnx", speed="fast", device="cpu", text_cache=False,
                     taxonomy="everyday", **ANY_LABEL)
    image_graph, text_graph = graphs(fast.embedder)
    assert image_graph.part == "clip-image-int8" and image_graph.path.name == "model.int8.onnx"
    assert image_graph.path.parent == graphs(exact.embedder)[0].path.parent
    assert text_graph.path == graphs(exact.embedder)[1].path
    assert not [p for p in image_graph.path.parent.iterdir() if p.name.startswith(".")]
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(16)]
    cos = (exact.embedder.embed_images(crops) * fast.embedder.embed_images(crops)).sum(1)
    assert cos.min() > 0.999 and not np.allclose(cos, 1.0, atol=1e-7)  # int8, and close
    grid = {"points_per_side": 16, "box_nms_thresh": 1.0}
    a, b = exact.segment_everything(_image(), **grid), fast.segment_everything(_image(), **grid)
    assert len(a.regions) >= 20 and [r.rle for r in a.regions] == [r.rle for r in b.regions]
    same = sum(x.label == y.label for x, y in zip(a.regions, b.regions, strict=True))
    assert same >= 0.9 * len(a.regions)
    torch_fast = Segmenter("tiny-random", "tiny-random", speed="fast", device="cpu", text_cache=False)
    assert graphs(torch_fast.embedder) == []  # PyTorch keeps its fp32 towers
