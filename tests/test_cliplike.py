"""Labelling in the CLIP-like world (soft, correlated similarities; a SAM-like proposer), over several seeds.

Each rule-level test also runs *today's* rules (top-down from the top-level names, free text against the 8
negatives only, containers keep their labels) to show the failure the new rule fixes, in the same world.
"""

from __future__ import annotations

import numpy as np
import pytest

from clipsam.core import masks as M
from clipsam.core.crops import crop_region
from clipsam.testing.world import CLIPLikeWorld, absent_term, basic_terms, level_hits, object_crops, query_counts

TODAY = {"scoring": "top-down", "vocabulary": False, "union_margin": None}
SEEDS = (101, 102, 103, 104, 105)


def _scenes(seeds=SEEDS, per_seed: int = 3):
    for seed in seeds:
        world = CLIPLikeWorld(seed)
        for k in range(per_seed):
            yield world, world.scene(k)


def _free_text(rules: dict) -> tuple[float, float]:
    counts = np.zeros(3, int)
    for world, scene in _scenes():
        seg = world.segmenter(scene, taxonomy=None, **rules)
        for term in basic_terms(scene) + [absent_term(world, scene)]:
            counts += query_counts(seg.segment(scene.image, term), scene, term)
    tp, fp, fn = counts
    return tp / (tp + fp), tp / (tp + fn)


def _levels(rules: dict, seeds=SEEDS[:4]) -> dict[str, float]:
    hits: dict[str, list[bool]] = {}
    for world, scene in _scenes(seeds, 2):
        for level, h in level_hits(world.segmenter(scene, **rules).segment_everything(scene.image), scene).items():
            hits.setdefault(level, []).extend(h)
    return {level: float(np.mean(h)) for level, h in hits.items()}


def test_world_similarities_are_clip_like():
    """Matched ~0.30, unrelated ~0.17, related words and superclass names in between; crops mix what they show."""
    matched, unrelated, sibling, superclass = [], [], [], []
    for world, scene in _scenes(SEEDS[:3], 2):
        emb = world.embedder
        objects, feats = object_crops(world, scene)
        for s, f in zip(objects, feats, strict=True):
            node = world.taxonomy.get(s.path[:2])
            siblings = [c for c in node.parent.children if c is not node][:3]
            words = [node.name, "toaster" if node.name != "toaster" else "zebra", *[c.name for c in siblings],
                     node.parent.name]
            sims = f @ emb.embed_texts([f"a photo of a {w}." for w in words]).T
            matched.append(sims[0])
            unrelated.append(sims[1])
            sibling.extend(sims[2:-1])
            superclass.append(sims[-1])
    assert 0.26 < np.mean(matched) < 0.34 and 0.13 < np.mean(unrelated) < 0.21
    assert np.mean(unrelated) < np.mean(superclass) < np.mean(matched)
    assert np.mean(unrelated) < np.mean(sibling) < np.mean(matched)
    assert 0.015 < np.std(np.asarray(matched) - np.asarray(unrelated)) < 0.06  # soft: crops vary
    # a union looks partly like both of its members
    world = CLIPLikeWorld(7)
    scene = next(world.scene(k) for k in range(20) if world.scene(k).unions)
    emb = world.embedder
    emb.scene = scene
    union = scene.unions[0]
    small = next(s for s in scene.instances if s.kind == "object" and s.parent is not None)
    support = scene.instances[small.parent]
    f = emb.embed_images([crop_region(scene.image, M.decode(r), M.bbox_xywh(r), size=emb.image_size)
                          for r in (union, small.rle)])
    text = emb.embed_texts([f"a photo of a {small.path[1]}.", f"a photo of a {support.path[1]}.", "a photo of a yak."])
    sims = f @ text.T
    assert sims[0, 0] < sims[1, 0] and sims[0, 0] > sims[0, 2] and sims[0, 1] > sims[0, 2]


def test_free_text_precision_and_recall():
    """``segment(img, "cat")`` without a taxonomy: the returned regions are the objects of that name."""
    precision, recall = _free_text({})
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    today_precision, _ = _free_text(TODAY)  # sofas, cars and unions returned as cats
    assert today_precision < 0.6, today_precision


def test_a_cat_on_a_sofa_is_the_cat_not_the_union():
    returned_union = {"default": 0, "today": 0}
    tight = total = 0
    for world, scene in _scenes(SEEDS + (106, 107), 3):
        if not scene.unions:
            continue
        on = [s for s in scene.instances if s.kind == "object" and s.parent is not None]
        for name, rules in (("default", {}), ("today", TODAY)):
            seg = world.segmenter(scene, taxonomy=None, **rules)
            for s in on:
                result = seg.segment(scene.image, s.path[1])
                if len(result) and (M.iou_matrix([r.rle for r in result], list(scene.unions)) >= 0.9).any():
                    returned_union[name] += 1
                if name == "default":
                    total += 1
                    tight += bool(len(result)) and M.iou_matrix([result[0].rle], [s.rle])[0, 0] >= 0.8
    assert total >= 8
    assert returned_union["default"] == 0 and tight >= 0.9 * total, (returned_union, tight, total)
    assert returned_union["today"] >= 0.25 * total, returned_union


def test_taxonomy_labels_at_every_level():
    """``segment_everything`` with ``everyday``: objects at each level, parts, and background as unknown."""
    acc = _levels({})
    assert acc["object L1"] >= 0.9 and acc["object L2"] >= 0.9 and acc["object L3"] >= 0.8, acc
    assert acc["part"] >= 0.8 and acc["stuff"] >= 0.95, acc
    top_down = _levels({"scoring": "top-down"})  # the option: superclass names are what CLIP matches worst
    assert top_down["object L1"] < acc["object L1"] - 0.3, (top_down, acc)
    today = _levels(TODAY)
    assert today["object L1"] < 0.7, today


def test_scores_are_whole_path_probabilities():
    for world, scene in _scenes(SEEDS[:2], 2):
        seg = world.segmenter(scene).segment_everything(scene.image)
        by_id = {r.id: r for r in seg}
        labelled = [r for r in seg if r.label_path]
        assert labelled
        for r in labelled:
            assert len(r.path_scores) == len(r.label_path) and r.score == r.path_scores[-1]
            assert all(a >= b - 1e-12 for a, b in zip(r.path_scores, r.path_scores[1:], strict=False)), r
            if r.kind == "part":  # a part is never surer than the whole (at the level its parts are defined)
                whole = by_id[r.parent_id]
                while whole.kind != "object":
                    whole = by_id[whole.parent_id]
                depth = next(d for d in range(len(r.label_path), 0, -1) if r.label_path[:d] == whole.label_path[:d])
                assert r.score <= whole.path_scores[depth - 1] + 1e-12
        assert seg.best.score == max(r.score for r in labelled)


@pytest.mark.parametrize("seed", [3, 4])
def test_world_is_seeded(seed):
    a, b = CLIPLikeWorld(seed), CLIPLikeWorld(seed)
    sa, sb = a.scene(1), b.scene(1)
    assert np.array_equal(sa.image, sb.image) and [s.path for s in sa.instances] == [s.path for s in sb.instances]
    assert np.array_equal(a.text_vector("a photo of a cat."), b.text_vector("a photo of a cat."))
    assert not np.array_equal(CLIPLikeWorld(seed + 10).text_vector("a photo of a cat."),
                              a.text_vector("a photo of a cat."))


def test_every_returned_region_carries_a_label_that_fits():
    """What a user receives (issue 23): every labelled region of ``segment_everything``, pieces included, judged by
    what lies under most of its pixels, at both crop-noise levels. Before, a half of an object was labelled among
    the *other* categories (its own taken out and the rest renormalised): 2 of 16 pieces right on seeds 0-4, and
    confident wrong labels among them."""
    from clipsam.testing.world import WorldParams, region_verdicts

    for noise, floor in ((0.57, 0.99), (0.95, 0.93)):
        verdicts = []
        for seed in (201, 202, 203, 204, 205):  # seeds no rule was looked at on
            world = CLIPLikeWorld(seed, WorldParams(crop_noise=noise))
            for k in range(3):
                scene = world.scene(k)
                verdicts += region_verdicts(world.segmenter(scene).segment_everything(scene.image), scene,
                                            world.taxonomy)
        right = [v["correct"] for v in verdicts]
        assert len(right) > 60 and np.mean(right) >= floor, (noise, np.mean(right))
        if noise == 0.57:
            assert not [v for v in verdicts if not v["correct"] and v["score"] >= 0.5]


@pytest.mark.parametrize("path", ["grid", "guided", "concepts"])
def test_one_path_score_per_label_level_on_every_path(path):
    """Every region of every way of making regions has one path score per level of its label path (issue 23: SAM 3's
    inherited parts had the whole object's)."""
    checked = 0
    for seed in (101, 102):
        world = CLIPLikeWorld(seed)
        for k in range(3):
            scene = world.scene(k)
            seg = world.segmenter(scene, concepts=path == "concepts")
            kwargs = {"strategy": "guided"} if path == "guided" else {}
            for r in seg.segment_everything(scene.image, **kwargs):
                assert len(r.path_scores) == len(r.label_path), (path, r.label_path, r.path_scores)
                checked += bool(r.label_path)
    assert checked > 20


@pytest.mark.parametrize("extra", [{"copies": 2}, {"copies": 4}, {"pieces": 5}], ids=["2 dogs", "4 dogs", "5 pieces"])
def test_repeated_instances_and_piece_heavy_scenes(extra):
    """Issue 23's harder scenes, on seeds no rule was tuned on: several instances of one category (SAM also proposes
    each pair and the group), and five pieces per object. Before, a pair of dogs took the label and both dogs were
    ``unknown part`` (object recall 0.56 with 2, 0.39 with 4), and pieces were returned for free text."""
    from clipsam.testing.world import WorldParams, basic_terms, level_hits, query_counts, region_verdicts

    verdicts, hits, counts = [], [], np.zeros(3, int)
    for seed in (301, 302, 303):
        world = CLIPLikeWorld(seed, WorldParams(**extra))
        for k in range(3):
            scene = world.scene(k)
            result = world.segmenter(scene).segment_everything(scene.image)
            verdicts += region_verdicts(result, scene, world.taxonomy)
            hits += level_hits(result, scene)["object L1"]
            free = world.segmenter(scene, taxonomy=None)
            for term in basic_terms(scene):
                counts += query_counts(free.segment(scene.image, term), scene, term)
    tp, fp, fn = counts
    assert len(hits) >= 20 and np.mean(hits) >= 0.95, np.mean(hits)
    assert np.mean([v["correct"] for v in verdicts]) >= 0.97
    assert not [v for v in verdicts if v["kind"] == "group"]  # a pair or group of instances is never labelled
    assert tp / (tp + fp) >= 0.95 and tp / (tp + fn) >= 0.9, (tp, fp, fn)
