"""CLIP finds where, SAM cuts: dense features, relevance maps, guided prompts and pooled region features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipsam.core import masks as M
from clipsam.errors import ConfigError
from clipsam.models.base import dense_unsupported
from clipsam.models.build import build_embedder
from clipsam.stages.guide import find_seeds, pool_regions, relevance, seed_prompts
from clipsam.testing import oracle_segmenter, synthetic_scene, tiny_segmenter
from clipsam.testing.world import CLIPLikeWorld, basic_terms, level_hits, pooled_agreement, query_counts

GRID_PROMPTS = 32 * 32  # SAM's default automatic grid: one decoder prompt per point


class CountingProposer:
    """Wraps a proposer and counts decoder prompts (``predict`` calls) and grid runs."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name
        self.predicts = self.generates = 0

    def embed(self, image):
        return self.inner.embed(image)

    def predict(self, embedding, **kwargs):
        self.predicts += 1
        return self.inner.predict(embedding, **kwargs)

    def generate(self, image, embedding=None, **params):
        self.generates += 1
        return self.inner.generate(image, embedding, **params)


# -- pure parts ------------------------------------------------------------------------------------------------

def test_relevance_and_seeds():
    dense = np.zeros((4, 6, 3), np.float32)
    dense[..., 2] = 1.0  # background everywhere
    dense[0:2, 0:2] = (1.0, 0.0, 0.0)  # target 0 in the top-left corner
    dense[3, 5] = (1.0, 0.0, 0.0)  # and one stray cell
    text = np.eye(3, dtype=np.float32)  # rows: target 0, target 1, a competitor
    rel = relevance(dense, text, [[0], [1]], scale=10.0)
    assert rel.shape == (2, 4, 6)
    np.testing.assert_allclose(rel[0, 0, 0], np.exp(10) / (np.exp(10) + 2), rtol=1e-6)
    seeds = find_seeds(rel[0], threshold=0.5)
    assert [s.box for s in seeds] == [(0, 0, 2, 2), (3, 5, 4, 6)]  # largest mass first
    assert seeds[0].mass == pytest.approx(4 * rel[0, 0, 0])
    assert find_seeds(rel[0], threshold=0.5, within=np.pad(np.ones((2, 2), bool), ((0, 2), (0, 4))))[0].box == \
        (0, 0, 2, 2)
    assert len(find_seeds(rel[0], threshold=0.5, max_seeds=1)) == 1
    assert find_seeds(rel[1], threshold=0.5) == []  # target 1 is nowhere: no seed, not even the best cell
    point, box = seed_prompts(seeds[0], (4, 6), (40, 60))
    np.testing.assert_allclose(point, [5.0, 5.0])  # the peak cell's centre, (x, y) pixels
    np.testing.assert_allclose(box, [0.0, 0.0, 25.0, 25.0])  # grown by half a cell, clipped to the image


def test_pool_regions_weights_patches_by_coverage():
    dense = np.zeros((2, 2, 2), np.float32)
    dense[0, 0] = (1, 0)
    dense[0, 1] = (0, 1)
    mask = np.zeros((4, 4), bool)
    mask[0:2, 0:2] = True  # all of patch (0, 0)
    mask[0, 2] = True  # a quarter of patch (0, 1)
    tiny = np.zeros((4, 4), bool)
    tiny[3, 3] = True
    out = pool_regions(dense, [M.encode(mask), M.encode(tiny), M.encode(np.zeros((4, 4), bool))])
    np.testing.assert_allclose(out[0], np.array([4, 1]) / np.hypot(4, 1), rtol=1e-6)
    np.testing.assert_allclose(out[1], 0.0)  # its patch is all zeros
    np.testing.assert_allclose(out[2], 0.0)  # empty mask


# -- the real open_clip architecture -------------------------------------------------------------------------

def test_dense_features_of_an_open_clip_vit():
    emb = build_embedder("tiny-random", "cpu")
    assert dense_unsupported(emb) is None
    rng = np.random.default_rng(0)
    image = (rng.random((100, 150, 3)) * 255).astype(np.uint8)
    dense = emb.dense_features(image)
    patch = emb.model.visual.conv1.kernel_size[0]
    assert dense.shape == (round(100 * 64 / 150 / patch), 64 // patch, emb.embed_texts(["x"]).shape[1])
    np.testing.assert_allclose(np.linalg.norm(dense, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(dense, emb.dense_features(image))  # deterministic
    assert emb.dense_features(image, long_side=128).shape[:2] == (round(100 * 128 / 150 / patch), 128 // patch)
    # the token pipeline is the model's own: at its input size, all blocks + the class token give encode_image
    square = (rng.random((emb.image_size, emb.image_size, 3)) * 255).astype(np.uint8)
    seq, grid = emb._tokens(square, emb.image_size)
    visual = emb.model.visual
    with torch.inference_mode():
        for block in visual.transformer.resblocks:
            seq = emb._block(block, seq)
        ours = visual.ln_post(seq[:, 0]) @ visual.proj
        ref = emb.model.encode_image(emb.preprocess(Image.fromarray(square))[None])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_embedders_without_dense_features_say_why():
    scene = synthetic_scene()
    assert "no dense_features" in dense_unsupported(oracle_segmenter(scene).embedder)

    emb = build_embedder("tiny-random", "cpu")
    emb.model.visual.attn_pool = torch.nn.Identity()
    assert "attention pooling" in emb.dense_unsupported()


def test_guided_falls_back_to_the_grid_without_dense_features():
    scene = synthetic_scene()
    seg = oracle_segmenter(scene)
    guided = seg.segment(scene.image, "dog", strategy="guided")
    assert seg.last_stats["strategy"] == "grid"
    grid = seg.segment(scene.image, "dog")
    assert [r.label for r in guided] == [r.label for r in grid] == ["dog", "puppy"]


def test_guided_on_the_tiny_real_models(chelsea):
    seg = tiny_segmenter(taxonomy="coco")
    counting = CountingProposer(seg.proposer)
    seg._proposer = counting
    first = seg.segment_everything(chelsea, strategy="guided")
    stats = dict(seg.last_stats)
    again = seg.segment_everything(chelsea, strategy="guided")
    assert stats["strategy"] == "guided" and counting.generates == 0  # no grid
    assert counting.predicts == 2 * stats["decoder_prompts"]  # two identical runs
    assert [r.rle for r in first] == [r.rle for r in again]  # deterministic
    assert all(tuple(r.rle["size"]) == chelsea.shape[:2] for r in first)


# -- the CLIP-like world -----------------------------------------------------------------------------------

def test_guided_finds_every_named_object_with_10x_fewer_prompts():
    found = {"grid": np.zeros(3, int), "guided": np.zeros(3, int)}
    prompts = []
    for seed in (201, 202, 203, 204):
        world = CLIPLikeWorld(seed)
        for k in range(3):
            scene = world.scene(k)
            seg = world.segmenter(scene, taxonomy=None)
            counting = CountingProposer(world.proposer)
            seg._proposer = counting
            for term in basic_terms(scene):
                before = counting.predicts
                found["guided"] += query_counts(seg.segment(scene.image, term, strategy="guided"), scene, term)
                prompts.append(counting.predicts - before)
                assert seg.last_stats["decoder_prompts"] == prompts[-1]
                found["grid"] += query_counts(seg.segment(scene.image, term), scene, term)
    tp, fp, fn = found["guided"]
    assert tp / (tp + fn) >= 0.95 and tp / (tp + fp) >= 0.9, found
    assert tp >= found["grid"][0] - 1
    assert max(prompts) * 10 <= GRID_PROMPTS, max(prompts)


def test_guided_level_by_level_with_a_taxonomy():
    hits: dict[str, list[bool]] = {}
    prompts = []
    for seed in (211, 212, 213):
        world = CLIPLikeWorld(seed)
        for k in range(2):
            scene = world.scene(k)
            seg = world.segmenter(scene)
            result = seg.segment_everything(scene.image, strategy="guided")
            prompts.append(seg.last_stats["decoder_prompts"])
            for level, h in level_hits(result, scene).items():
                hits.setdefault(level, []).extend(h)
    acc = {level: float(np.mean(h)) for level, h in hits.items()}
    assert acc["object L1"] >= 0.85 and acc["part"] >= 0.4, acc  # parts from their own maps, inside objects
    assert max(prompts) * 10 <= GRID_PROMPTS, prompts


def test_pooled_region_features_agree_with_crops():
    agree = total = 0
    for seed in (221, 222):
        world = CLIPLikeWorld(seed)
        for k in range(3):
            a, n = pooled_agreement(world, world.scene(k))
            agree, total = agree + a, total + n
    assert total >= 20 and agree >= 0.9 * total, (agree, total)
    world = CLIPLikeWorld(223)
    scene = world.scene(0)
    seg = world.segmenter(scene, taxonomy=None, region_features="pooled")
    term = basic_terms(scene)[0]
    tp, fp, fn = query_counts(seg.segment(scene.image, term), scene, term)
    assert tp >= 1 and fp == 0


def test_strategy_and_feature_options_are_checked():
    with pytest.raises(ConfigError, match="strategy must be one of grid, guided"):
        oracle_segmenter().segment(synthetic_scene().image, "dog", strategy="smart")
    with pytest.raises(ConfigError, match="region_features must be one of crops, pooled"):
        tiny_segmenter(region_features="patches")
    with pytest.raises(ConfigError, match="needs a taxonomy"):
        tiny_segmenter().segment_everything(np.zeros((32, 32, 3), np.uint8), strategy="guided")
