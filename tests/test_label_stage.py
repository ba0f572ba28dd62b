"""The label stage on hand-written similarity matrices: every rule, no models, no images."""

from __future__ import annotations

import numpy as np
import pytest

from clipsam.core.taxonomy import Taxonomy
from clipsam.stages.label import (
    LabelPolicy,
    drop_nested_same_label,
    label_tree,
    match_query,
    parse_query,
    resolve_query,
)

#: One axis per concept: a region's embedding row *is* its similarity to each concept's text.
AXES = ["animal", "dog", "puppy", "cat", "furniture", "sofa", "dog head", "dog tail", "background", "zorb"]
TAX = Taxonomy.from_dict({"name": "t", "nodes": [
    {"name": "animal", "children": [{"name": "dog", "children": ["puppy"], "parts": ["head", "tail"]}, "cat"]},
    {"name": "furniture", "children": ["sofa"]},
]})
#: The top-down rules (kept as an option) with negatives only: these tests pin its semantics exactly.
TOP_DOWN = {"scoring": "top-down", "vocabulary": False, "union_margin": None}
POLICY = LabelPolicy(negatives=("background",), min_confidence=0.3, descend_confidence=0.5, part_confidence=0.3,
                     **TOP_DOWN)


class FixedBank:
    """Text vectors: the axis of a prompt set's first prompt (parts' default prompts start with "dog head")."""

    logit_scale = 10.0

    def embed(self, prompt_sets):
        out = np.zeros((len(prompt_sets), len(AXES)), np.float32)
        for k, prompts in enumerate(prompt_sets):
            out[k, AXES.index(prompts[0])] = 1.0
        return out

    def embed_nodes(self, nodes):
        return self.embed([n.prompts for n in nodes])


def rows(*weights: dict[str, float]) -> np.ndarray:
    """Region embeddings from ``{concept: similarity}`` (unit length not needed: the scale is fixed)."""
    out = np.zeros((len(weights), len(AXES)), np.float32)
    for i, w in enumerate(weights):
        for name, v in w.items():
            out[i, AXES.index(name)] = v
    return out


def softmax(x):
    e = np.exp(10.0 * (np.asarray(x) - np.max(x)))
    return e / e.sum()


def test_top_level_accept_unknown_and_threshold():
    feats = rows({"animal": 0.9, "dog": 0.6, "cat": 0.6},   # animal, but not clearly dog or cat
                 {"background": 0.9, "furniture": 0.3},       # a negative wins: unknown
                 {"animal": 0.5, "furniture": 0.5})           # tied top level: 0.5 each minus the negative's share
    out = label_tree(feats, np.full(3, -1), TAX, FixedBank(), POLICY)
    assert out.kinds == ("object", "unknown", "object")
    d = out.decisions[0]
    assert d.node.path == ("animal",) and d.path_scores[0] == pytest.approx(softmax([0.9, 0, 0])[0], rel=1e-5)
    assert out.decisions[1].node is None and out.decisions[1].best_guess.name == "furniture"
    p_animal = np.exp(5) / (2 * np.exp(5) + 1)  # 0.4983: the tie shares the mass
    assert out.decisions[2].path_scores[0] == pytest.approx(p_animal, rel=1e-5)
    for threshold, kind in ((0.49, "object"), (0.499, "unknown")):
        policy = LabelPolicy(("background",), min_confidence=threshold, **TOP_DOWN)
        assert label_tree(feats[2:], np.full(1, -1), TAX, FixedBank(), policy).kinds == (kind,)


def test_descend_needs_a_clear_child():
    feats = rows({"animal": 0.5, "dog": 0.9, "puppy": 0.2},   # dog clearly; puppy not
                 {"animal": 0.5, "dog": 0.6, "puppy": 0.95},  # dog -> puppy
                 {"animal": 0.8, "dog": 0.55, "cat": 0.55})   # animal: neither child wins half
    out = label_tree(feats, np.full(3, -1), TAX, FixedBank(), POLICY)
    assert [d.node.path for d in out.decisions] == [("animal", "dog"), ("animal", "dog", "puppy"), ("animal",)]
    assert len(out.decisions[1].path_scores) == 3
    p_root = softmax([0.5, 0.0, 0.0])[0]  # top level: animal, furniture, background
    p_child = softmax([0.5, 0.9, 0.0])[1]  # options at the animal level: animal itself, dog, cat
    # path_scores hold the probability of the path so far: P(animal) * P(dog | animal)
    assert out.decisions[0].path_scores == pytest.approx((p_root, p_root * p_child), rel=1e-5)
    assert out.decisions[0].score == out.decisions[0].path_scores[-1]


def test_inside_an_object_parts_unknown_parts_and_objects_on_top():
    feats = rows({"animal": 0.5, "dog": 0.9},                 # 0: the dog
                 {"dog head": 0.9, "dog": 0.4, "background": 0.5},  # 1: its head (part)
                 {"dog head": 0.3, "dog tail": 0.3, "background": 0.9},  # 2: inside, background wins
                 {"furniture": 0.5, "sofa": 0.9},              # 3: a sofa
                 {"animal": 0.6, "cat": 0.95, "sofa": 0.3})    # 4: a cat lying on the sofa: an object on top
    parents = np.array([-1, 0, 0, -1, 3])
    out = label_tree(feats, parents, TAX, FixedBank(), POLICY)
    assert out.kinds == ("object", "part", "unknown part", "object", "object")
    head = out.decisions[1]
    assert head.node.path == ("animal", "dog", "head")
    assert head.path_scores[:2] == out.decisions[0].path_scores  # the whole's levels, then the part's
    assert out.decisions[4].node.path == ("animal", "cat")
    without_parts = label_tree(feats, parents, TAX, FixedBank(), POLICY, with_parts=False)
    assert without_parts.kinds[1] == "unknown part"  # no parts to choose from; no rival wins


def test_part_below_part_confidence_is_an_unknown_part():
    feats = rows({"animal": 0.5, "dog": 0.9}, {"dog head": 0.5, "dog tail": 0.5, "cat": 0.45, "furniture": 0.45})
    # head and tail tie: each holds just under half of what is inside the dog (its parts and its own category)
    for threshold, kind in ((0.45, "part"), (0.55, "unknown part")):
        policy = LabelPolicy(("background",), part_confidence=threshold, **TOP_DOWN)
        out = label_tree(feats, np.array([-1, 0]), TAX, FixedBank(), policy)
        assert out.kinds[1] == kind and out.decisions[1].best_guess.name in ("head", "tail")


def test_children_listed_before_parents_are_still_labelled_after_them():
    feats = rows({"dog head": 0.9}, {"animal": 0.5, "dog": 0.9})
    out = label_tree(feats, np.array([1, -1]), TAX, FixedBank(), POLICY)
    assert out.kinds == ("part", "object")


def test_query_matching_through_the_taxonomy_and_free_text():
    feats = rows({"animal": 0.5, "dog": 0.6, "puppy": 0.95}, {"dog head": 0.9}, {"animal": 0.6, "cat": 0.95},
                 {"furniture": 0.5, "sofa": 0.9}, {"zorb": 0.9})
    parents = np.array([-1, 0, -1, -1, -1])
    labelled = label_tree(feats, parents, TAX, FixedBank(), POLICY)
    for query, expected in [("animal", [0, 2]), ("dog", [0]), ("puppy", [0]), ("head", [1]), ("sofa", [3]),
                            ("cat, sofa", [2, 3])]:
        resolved, free = resolve_query(parse_query(query), TAX)
        assert not free
        assert sorted(match_query(feats, parents, resolved, free, FixedBank(), POLICY, labelled)) == expected, query
    resolved, free = resolve_query(["zorb"], TAX)
    assert resolved == [] and free == ["zorb"]
    matched = match_query(feats, parents, resolved, free, FixedBank(), POLICY)
    assert sorted(matched) == [4] and matched[4][0].node.name == "zorb" and matched[4][1] == "object"


def test_parse_query():
    assert parse_query(" dog , cat,dog ") == ["dog", "cat"]
    assert parse_query(["dog", " cat "]) == ["dog", "cat"]
    from clipsam.errors import PromptError

    for bad in ("", " , ", []):
        with pytest.raises(PromptError, match="empty"):
            parse_query(bad)


def test_drop_nested_same_label():
    from clipsam.core import masks as M
    from clipsam.core.labels import LabelDecision

    big = np.zeros((10, 10), bool)
    big[:, :8] = True
    small = np.zeros((10, 10), bool)
    small[2:6, 2:6] = True
    other = np.zeros((10, 10), bool)
    other[:, 8:] = True
    rles = [M.encode(m) for m in (big, small, other)]
    dog, cat = TAX.get("animal/dog"), TAX.get("animal/cat")
    same = {0: (LabelDecision(dog, (0.9,)), "object"), 1: (LabelDecision(dog, (0.9,)), "object"),
            2: (LabelDecision(dog, (0.9,)), "object")}
    assert drop_nested_same_label(rles, same, 0.9) == [0, 2]
    different = {0: (LabelDecision(dog, (0.9,)), "object"), 1: (LabelDecision(cat, (0.9,)), "object")}
    assert drop_nested_same_label(rles, different, 0.9) == [0, 1]


def test_scores_are_path_probabilities_that_never_increase_with_depth():
    """``score`` is the probability of the whole path: a puppy at depth 3 cannot outrank a dog at depth 2 on weaker
    evidence, and part levels that were not scored on their own are not copied from the part below."""
    tax = Taxonomy.from_dict({"name": "t", "nodes": [
        {"name": "animal", "children": [{"name": "dog", "children": ["puppy"],
                                         "parts": [{"name": "head", "parts": ["ear"]}, "tail"]}, "cat"]},
        {"name": "furniture", "children": ["sofa"]}]})
    axes = AXES + ["dog ear"]

    class Bank(FixedBank):
        def embed(self, prompt_sets):
            out = np.zeros((len(prompt_sets), len(axes)), np.float32)
            for k, prompts in enumerate(prompt_sets):
                out[k, axes.index(prompts[0])] = 1.0
            return out

    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        n = 6
        feats = rng.random((n, len(axes))).astype(np.float32) * rng.random((n, 1)).astype(np.float32)
        parents = np.array([-1, 0, 1, -1, 3, 0])
        out = label_tree(feats, parents, tax, Bank(), LabelPolicy(("background",), 0.2, 0.3, 0.2, **TOP_DOWN))
        for d in out.decisions:
            if d.node is None:
                continue
            checked += 1
            scores = np.asarray(d.path_scores)
            assert len(scores) == len(d.node.path)
            assert (np.diff(scores) <= 1e-9).all(), (d.node.path, scores)
            assert d.score == scores[-1] and 0.0 < d.score <= 1.0
    assert checked > 500
    # an ear chosen directly among the parts: the head level holds P(head or its sub-parts), not a copy of the ear's
    feats = rows({"animal": 0.5, "dog": 0.9}, {"dog head": 0.6})
    feats = np.concatenate([feats, np.zeros((2, 1), np.float32)], axis=1)
    feats[1, axes.index("dog ear")] = 0.7
    out = label_tree(feats, np.array([-1, 0]), tax, Bank(), POLICY)
    ear = out.decisions[1]
    assert ear.node.path == ("animal", "dog", "head", "ear")
    dog_p = out.decisions[0].score
    p = softmax([0.6, 0.7, 0.0, 0.0, 0.0, 0.0])  # head, ear, tail, furniture (rival), animal (its own), background
    inside = p[0] + p[1] + p[2] + p[4]  # part probabilities are conditional on lying inside the dog
    assert ear.path_scores[2] == pytest.approx(dog_p * (p[0] + p[1]) / inside, rel=1e-5)
    assert ear.path_scores[3] == pytest.approx(dog_p * p[1] / inside, rel=1e-5)


# -- the default rules: subtree scoring, the union and group rules ----------------------------------------------

SUBTREE = LabelPolicy(negatives=("background",), vocabulary=False)


def test_subtree_scoring_sums_a_label_with_everything_below_it():
    """CHiLS: a crop that matches "dog" and "puppy" but hardly "animal" is an animal through its subtree, which
    the top-down rules (asking "animal" first) miss."""
    feats = rows({"animal": 0.1, "dog": 0.6, "puppy": 0.7, "furniture": 0.1, "background": 0.3})
    out = label_tree(feats, np.full(1, -1), TAX, FixedBank(), SUBTREE)
    d = out.decisions[0]
    # one softmax over animal, dog, puppy, cat, furniture, sofa and background
    p = softmax([0.1, 0.6, 0.7, 0.0, 0.1, 0.0, 0.3])
    assert d.node.path == ("animal", "dog", "puppy")
    assert d.path_scores == pytest.approx((p[0] + p[1] + p[2] + p[3], p[1] + p[2], p[2]), rel=1e-5)
    assert label_tree(feats, np.full(1, -1), TAX, FixedBank(), POLICY).kinds == ("unknown",)  # top-down: background
    # the descent stops where no child holds descend_confidence of its parent's mass
    feats = rows({"dog": 0.6, "puppy": 0.55})
    assert label_tree(feats, np.full(1, -1), TAX, FixedBank(), SUBTREE).decisions[0].node.path == ("animal", "dog")


def test_a_container_that_merely_contains_a_label_loses_it():
    """A sofa+cat union that scores "cat" (on its own) but far less than the cat inside it is labelled without cat;
    a half that scores a little more than its whole does not take the label from it."""
    feats = rows({"cat": 0.55, "sofa": 0.5},   # 0: union, slightly more cat than sofa
                 {"cat": 0.95},                # 1: the cat, inside 0 (0.4 higher: 4 logits at this bank's scale 10)
                 {"dog": 0.9},                 # 2: a dog
                 {"dog": 0.95})                # 3: half of the dog, inside 2 (0.05 higher: 0.5 logits)
    parents = np.array([-1, 0, -1, 2])
    policy = LabelPolicy(negatives=("background",), vocabulary=False, union_margin=2.0)
    out = label_tree(feats, parents, TAX, FixedBank(), policy)
    assert out.decisions[0].node.path == ("furniture", "sofa") and out.kinds[:2] == ("object", "object")
    assert out.decisions[1].node.path == ("animal", "cat")
    assert out.decisions[2].node.path == ("animal", "dog") and out.kinds[3] != "object"
    off = label_tree(feats, parents, TAX, FixedBank(), LabelPolicy(("background",), vocabulary=False,
                                                                     union_margin=None))
    assert off.decisions[0].node.path == ("animal", "cat") and off.kinds[1] != "object"  # the bug: union is "cat"


def test_a_region_covered_by_two_objects_is_a_group_not_an_object():
    from clipsam.core import masks as M

    union = np.zeros((10, 20), bool)
    union[:, :20] = True
    cat, sofa, half = np.zeros_like(union), np.zeros_like(union), np.zeros_like(union)
    cat[:, :8] = True
    sofa[:, 8:] = True
    half[:, :10] = True
    rles = [M.encode(m) for m in (union, cat, sofa)]
    feats = rows({"cat": 0.8, "sofa": 0.7}, {"cat": 0.9}, {"sofa": 0.9})
    parents = np.array([-1, 0, 0])
    out = label_tree(feats, parents, TAX, FixedBank(), SUBTREE, rles=rles)
    assert out.kinds == ("unknown", "object", "object")
    assert [d.node.name if d.node else None for d in out.decisions] == [None, "cat", "sofa"]
    # two members of the same category (two halves of a dog) do not make a group
    rles = [M.encode(m) for m in (union, half, ~half)]
    feats = rows({"dog": 0.9}, {"dog": 0.9}, {"dog": 0.85})
    out = label_tree(feats, parents, TAX, FixedBank(), SUBTREE, rles=rles)
    assert out.kinds[0] == "object" and out.decisions[0].node.name == "dog"


def test_free_text_competes_against_the_vocabulary():
    """``"cat"`` with no taxonomy: a sofa closer to "cat" than to the negatives is still a sofa."""
    axes = ["cat", "couch", "animal", "kitten", "background", "elsewhere"]

    class Bank:
        logit_scale = 100.0

        def embed(self, prompt_sets):
            out = np.zeros((len(prompt_sets), len(axes)), np.float32)
            for k, prompts in enumerate(prompt_sets):
                out[k, axes.index(prompts[0]) if prompts[0] in axes else -1] = 1.0
            return out

    feats = np.zeros((3, len(axes)), np.float32)
    feats[0, [0, 1, 4]] = (0.22, 0.30, 0.18)  # a sofa, a little like a cat
    feats[1, [0, 1, 4]] = (0.30, 0.20, 0.18)  # a cat
    feats[2, [3, 0, 4]] = (0.30, 0.26, 0.18)  # a kitten: counts for the query "cat"
    parents = np.full(3, -1)
    policy = LabelPolicy(negatives=("background",))
    assert sorted(match_query(feats, parents, [], ["cat"], Bank(), policy)) == [1, 2]
    today = LabelPolicy(negatives=("background",), **TOP_DOWN)
    assert sorted(match_query(feats, parents, [], ["cat"], Bank(), today)) == [0, 1, 2]  # the sofa was a cat


# -- issue 23: a piece of an object is never renamed by renormalising what is left ----------------------------------

@pytest.mark.parametrize("policy", [POLICY, SUBTREE], ids=["top-down", "subtree"])
def test_a_piece_whose_best_label_is_its_owners_category_is_an_unknown_part(policy):
    """Half of a dog inside the dog: its own best label is "dog" (0.8), and furniture barely registers (0.45). Taking
    the dog's category out and renormalising what is left made it "furniture" with a high score; in one softmax over
    every candidate, the dog's category wins and the half is a piece of the dog."""
    feats = rows({"animal": 0.6, "dog": 0.9},                 # 0: the dog
                 {"animal": 0.5, "dog": 0.8, "furniture": 0.45, "sofa": 0.45})  # 1: its left half
    out = label_tree(feats, np.array([-1, 0]), TAX, FixedBank(), policy)
    assert out.kinds == ("object", "unknown part")
    assert out.decisions[1].node is None and out.decisions[1].best_guess.path[0] == "animal"


@pytest.mark.parametrize("policy", [POLICY, SUBTREE], ids=["top-down", "subtree"])
def test_another_category_inside_an_object_must_beat_the_owners_own(policy):
    """A cat lying on the sofa, inside the sofa's mask: "cat" beats "sofa" on the region itself, so it is a cat; the
    same region showing the sofa more strongly than the cat is a piece of the sofa."""
    cat_on_sofa = rows({"furniture": 0.6, "sofa": 0.9},       # 0: the sofa
                       {"animal": 0.6, "cat": 0.95, "furniture": 0.3, "sofa": 0.3})
    out = label_tree(cat_on_sofa, np.array([-1, 0]), TAX, FixedBank(), policy)
    assert out.kinds == ("object", "object") and out.decisions[1].node.path[0] == "animal"
    sofa_piece = rows({"furniture": 0.6, "sofa": 0.9},
                      {"animal": 0.5, "cat": 0.55, "furniture": 0.7, "sofa": 0.8})
    out = label_tree(sofa_piece, np.array([-1, 0]), TAX, FixedBank(), policy)
    assert out.kinds == ("object", "unknown part")


def test_a_part_still_wins_over_its_owners_category():
    """The dog's head: "dog head" beats "dog" on the crop, so it is the named part, scored in the full softmax."""
    feats = rows({"animal": 0.6, "dog": 0.9}, {"dog head": 0.9, "dog": 0.6, "animal": 0.3})
    out = label_tree(feats, np.array([-1, 0]), TAX, FixedBank(), POLICY)
    assert out.kinds == ("object", "part") and out.decisions[1].node.name == "head"
    p = softmax([0.9, 0.0, 0.0, 0.3, 0.0])  # head, tail, furniture, animal (the owner's own), background
    inside = p[0] + p[1] + p[3]  # given that it lies inside the dog: its parts and its own category
    assert out.decisions[1].score == pytest.approx(out.decisions[0].score * p[0] / inside, rel=1e-5)


# -- issue 23: whole or union by what the container adds; groups by clusters; pieces that tile an unsure whole ------

def _masks(*boxes, size=(10, 40)):
    """RLEs of unions of column ranges ``(start, stop)`` (a box per argument; a tuple of ranges is their union)."""
    from clipsam.core import masks as M

    out = []
    for spans in boxes:
        m = np.zeros(size, bool)
        for a, b in (spans if isinstance(spans[0], tuple) else (spans,)):
            m[:, a:b] = True
        out.append(M.encode(m))
    return out


class Embedder:
    """``embed(masks)`` for the rest test: a fixed row, and a count of the calls."""

    def __init__(self, row):
        self.row, self.calls = row, 0

    def __call__(self, rles):
        self.calls += len(rles)
        return np.repeat(self.row, len(rles), axis=0)


MARGIN_2 = LabelPolicy(negatives=("background",), vocabulary=False, union_margin=2.0)


def test_whole_or_union_is_decided_by_what_the_container_adds():
    """The left half of a cat shows "cat" 3.5 logits more strongly than the whole cat: more than the margin (2), so
    the margin rule alone strips the whole of its label. Its rest (the right half) shows a cat: the container is the
    cat and keeps the label. The same geometry with a sofa in the rest is a union: it loses "cat"."""
    rles = _masks((0, 20), (0, 10))
    feats = rows({"cat": 0.6}, {"cat": 0.95})
    parents = np.array([-1, 0])
    alone = label_tree(feats, parents, TAX, FixedBank(), MARGIN_2, rles=rles)
    assert alone.decisions[0].node is None or alone.decisions[0].node.name != "cat"  # the margin rule
    same = label_tree(feats, parents, TAX, FixedBank(), MARGIN_2, rles=rles, embed=Embedder(rows({"cat": 0.9})))
    assert same.decisions[0].node.name == "cat" and same.kinds == ("object", "unknown part")
    union = label_tree(feats, parents, TAX, FixedBank(), MARGIN_2, rles=rles, embed=Embedder(rows({"sofa": 0.9})))
    assert union.decisions[0].node is None or union.decisions[0].node.name != "cat"
    assert union.decisions[1].node.name == "cat" and union.kinds[1] == "object"


def test_a_rest_too_small_to_be_anything_keeps_the_container_without_embedding_it():
    rles = _masks((0, 20), (0, 19))  # the rest is 5 % of the container
    feats = rows({"cat": 0.6}, {"cat": 0.95})
    embed = Embedder(rows({"sofa": 0.9}))
    out = label_tree(feats, np.array([-1, 0]), TAX, FixedBank(), MARGIN_2, rles=rles, embed=embed)
    assert out.decisions[0].node.name == "cat" and embed.calls == 0


def test_a_rest_that_nothing_claims_falls_back_to_the_margin():
    """A rest that another category wins, but below ``min_confidence`` (0.9 here: furniture 0.81): the rest cannot
    tell, and the margin (2 logits) decides."""
    rles = _masks((0, 20), (0, 10))
    unsure = rows({"sofa": 0.3})
    policy = LabelPolicy(negatives=("background",), vocabulary=False, union_margin=2.0, min_confidence=0.9)
    for gain, kept in ((0.15, True), (0.35, False)):  # 1.5 and 3.5 logits
        feats = rows({"cat": 0.6}, {"cat": 0.6 + gain})
        out = label_tree(feats, np.array([-1, 0]), TAX, FixedBank(), policy, rles=rles, embed=Embedder(unsure))
        assert (out.decisions[0].node is not None and out.decisions[0].node.name == "cat") is kept


def test_the_containers_own_parts_in_the_rest_are_the_same_thing():
    """The dog without its head inside the dog: the rest is the head. "head" is a part of the dog, not another
    thing, even where a competitor word says "head" too."""
    rles = _masks((0, 20), (4, 20))
    feats = rows({"dog": 0.6}, {"dog": 0.95})
    policy = LabelPolicy(negatives=("background", "dog head"), vocabulary=False, union_margin=2.0)
    out = label_tree(feats, np.array([-1, 0]), TAX, FixedBank(), policy, rles=rles,
                     embed=Embedder(rows({"dog head": 0.9})))
    assert out.decisions[0].node.name == "dog"


def test_separate_instances_of_one_category_make_a_group_and_stay_objects():
    """Two dogs apart and SAM's mask of the pair: the pair is a group (unknown), both dogs objects; the two halves
    of one dog touch, so they make no group. Four dogs with overlapping pair masks (each dog in two pairs, one
    parent each in the tree) and the mask of all four: every pair and the four are groups."""
    rles = _masks(((0, 8), (12, 20)), (0, 8), (12, 20))
    feats = rows({"dog": 0.9}, {"dog": 0.9}, {"dog": 0.85})
    out = label_tree(feats, np.array([-1, 0, 0]), TAX, FixedBank(), SUBTREE, rles=rles)
    assert out.kinds == ("unknown", "object", "object")
    dogs = [(0, 4), (8, 12), (16, 20), (24, 28)]
    pairs = [(dogs[0], dogs[1]), (dogs[1], dogs[2]), (dogs[2], dogs[3])]
    rles = _masks(tuple(dogs), *pairs, *dogs)
    parents = np.array([-1, 0, 0, 0, 1, 1, 2, 3])  # dog 1 under pair 0-1 only, dog 2 under pair 1-2 only
    feats = rows(*[{"dog": 0.9}] * 8)
    out = label_tree(feats, parents, TAX, FixedBank(), SUBTREE, rles=rles)
    assert out.kinds == ("unknown",) * 4 + ("object",) * 4


def test_an_unsure_whole_tiled_by_pieces_of_one_category_is_that_object():
    """The whole cup's crop matches nothing clearly (the negative wins); its two halves, touching, are both "dog"
    (one "puppy"): the whole is a dog, scored by its least sure piece, and the halves are pieces of it. Apart, the
    same pieces are two things: the whole stays unknown."""
    feats = rows({"background": 0.9, "dog": 0.5}, {"dog": 0.9}, {"dog": 0.8, "puppy": 0.95})
    out = label_tree(feats, np.array([-1, 0, 0]), TAX, FixedBank(), SUBTREE, rles=_masks((0, 20), (0, 10), (10, 20)))
    assert out.decisions[0].node.path == ("animal", "dog") and out.kinds == ("object", "unknown part", "unknown part")
    alone = label_tree(feats, np.full(3, -1), TAX, FixedBank(), SUBTREE)
    assert out.decisions[0].score == pytest.approx(min(d.path_scores[1] for d in alone.decisions[1:]))
    apart = label_tree(feats, np.array([-1, 0, 0]), TAX, FixedBank(), SUBTREE,
                       rles=_masks(((0, 9), (11, 20)), (0, 9), (11, 20)))
    assert apart.decisions[0].node is None and apart.kinds[1:] == ("object", "object")


def test_a_near_duplicate_of_an_object_is_merged_into_it():
    """A mask 95 % of the dog's, whose best label is the dog's category, is the dog again: merged (not returned);
    a half of the dog is a piece (returned as an unknown part)."""
    feats = rows({"dog": 0.9}, {"dog": 0.85}, {"dog": 0.85})
    out = label_tree(feats, np.array([-1, 0, 0]), TAX, FixedBank(), SUBTREE, rles=_masks((0, 20), (0, 19), (0, 10)))
    assert out.kinds == ("object", "unknown part", "unknown part") and out.merged == {1} and out.kept() == [0, 2]
    assert label_tree(feats, np.array([-1, 0, 0]), TAX, FixedBank(), SUBTREE).merged == frozenset()  # no masks


def test_another_category_inside_an_object_needs_the_nested_margin():
    """Inside a dog, a region whose crop says "sofa" 1.5 logits more than "dog" is still a piece of the dog (nested
    regions are pieces unless clearly another thing: ``NESTED_MARGIN`` = 2); 3 logits more, it is a sofa on it."""
    from clipsam.stages.label import NESTED_MARGIN

    assert NESTED_MARGIN == 2.0
    for gain, kind in ((0.15, "unknown part"), (0.3, "object")):  # x logit_scale 10
        feats = rows({"dog": 0.9}, {"dog": 0.6, "sofa": 0.6 + gain})
        out = label_tree(feats, np.array([-1, 0]), TAX, FixedBank(), SUBTREE)
        assert out.kinds == ("object", kind), gain


def test_overlapping_members_of_two_categories_are_no_group():
    """A dog whose big piece a noisy crop calls "sofa", overlapping the dog's half it is cut from: not a cat beside a
    sofa, so the dog stays a dog."""
    rles = _masks((0, 20), (5, 20), (0, 10))  # the dog, a piece (75 %) called sofa, its left half
    feats = rows({"dog": 0.9}, {"sofa": 0.9}, {"dog": 0.9})
    out = label_tree(feats, np.array([-1, 0, 0]), TAX, FixedBank(), SUBTREE, rles=rles)
    assert out.decisions[0].node.name == "dog"
    apart = label_tree(feats, np.array([-1, 0, 0]), TAX, FixedBank(), SUBTREE, rles=_masks((0, 20), (10, 20), (0, 10)))
    assert apart.decisions[0].node is None  # side by side: a group


def test_a_noisy_piece_does_not_veto_the_majority_that_tiles_an_unsure_whole():
    feats = rows({"background": 0.9, "dog": 0.5}, {"dog": 0.9}, {"dog": 0.9}, {"sofa": 0.9})
    rles = _masks((0, 20), (0, 10), (10, 20), (8, 12))  # two halves say dog, a small middle strip says sofa
    out = label_tree(feats, np.array([-1, 0, 0, 0]), TAX, FixedBank(), SUBTREE, rles=rles)
    assert out.decisions[0].node.name == "dog"
    rles = _masks((0, 20), (0, 4), (16, 20), (4, 16))  # the strip holds most of the area: no majority for dog
    out = label_tree(feats, np.array([-1, 0, 0, 0]), TAX, FixedBank(), SUBTREE, rles=rles)
    assert out.decisions[0].node is None or out.decisions[0].node.name != "dog"


def test_a_parts_confidence_is_conditional_on_lying_inside_its_owner():
    """A dog's head whose crop spreads a little probability over many other categories' labels, none near claiming
    it: "dog head" holds 0.24 of the softmax, but 0.47 of what is inside the dog; it is the head, not an unknown
    part below part_confidence 0.3."""
    feats = rows({"dog": 0.9}, {"dog head": 0.45, "dog": 0.25, "animal": 0.25, "cat": 0.4, "puppy": 0.3,
                                "furniture": 0.45, "sofa": 0.45})
    out = label_tree(feats, np.array([-1, 0]), TAX, FixedBank(), SUBTREE)
    assert out.kinds == ("object", "part") and out.decisions[1].node.name == "head"


def test_an_unsure_whole_with_one_half_is_that_object_when_its_rest_is_too():
    """SAM gave the whole cup (its crop unsure: the negative wins) and one half of it ("cup"). The whole's rest -- the
    other half -- embedded as one more crop, shows a cup too: the whole is the cup. If the rest shows a sofa, the
    whole stays unknown."""
    feats = rows({"background": 0.9, "cat": 0.5}, {"cat": 0.9})
    rles = _masks((0, 20), (0, 10))
    same = label_tree(feats, np.array([-1, 0]), TAX, FixedBank(), SUBTREE, rles=rles,
                      embed=Embedder(rows({"cat": 0.9})))
    assert same.decisions[0].node.name == "cat" and same.kinds == ("object", "unknown part")
    other = label_tree(feats, np.array([-1, 0]), TAX, FixedBank(), SUBTREE, rles=rles,
                       embed=Embedder(rows({"sofa": 0.9})))
    assert other.decisions[0].node is None and other.kinds == ("unknown", "object")


def test_a_group_is_never_promoted_back_by_one_of_its_members():
    """Two dogs apart and their pair mask: the pair is a group. One dog labelled, the other too unsure to be: the
    labelled dog covers more than half of the pair and the pair's rest (the other dog) shows a dog -- still a group,
    not one dog."""
    rles = _masks(((0, 11), (13, 20)), (0, 11), (13, 20))
    feats = rows({"dog": 0.9}, {"dog": 0.9}, {"background": 0.9, "dog": 0.5})
    out = label_tree(feats, np.array([-1, 0, 0]), TAX, FixedBank(), SUBTREE, rles=rles,
                     embed=Embedder(rows({"dog": 0.9})))
    assert out.decisions[0].node is None and out.kinds[:2] == ("unknown", "object")


def test_a_nested_rivals_score_carries_the_prior_that_it_is_a_piece():
    """Inside a dog, a region whose crop says "sofa" 3 logits more than "dog" is a sofa lying on it -- but its score is
    the sofa's probability once the dog's own explanation (its category and parts) is weighed by the same prior odds
    the decision used (e^NESTED_MARGIN to 1), not its share of the bare softmax: a rival that barely clears the
    margin is not reported as sure of itself."""
    from clipsam.stages.label import NESTED_MARGIN

    feats = rows({"dog": 0.9}, {"dog": 0.6, "sofa": 0.9})
    out = label_tree(feats, np.array([-1, 0]), TAX, FixedBank(), SUBTREE)
    assert out.kinds == ("object", "object") and out.decisions[1].node.path == ("furniture", "sofa")
    # one softmax: head, tail (the dog's parts), animal, dog, puppy, cat, furniture, sofa, background
    p = softmax([0.0, 0.0, 0.0, 0.6, 0.0, 0.0, 0.0, 0.9, 0.0])
    prior = 1.0 + (np.exp(NESTED_MARGIN) - 1.0) * (p[0] + p[1] + p[2] + p[3] + p[4] + p[5])
    assert out.decisions[1].path_scores == pytest.approx(((p[6] + p[7]) / prior, p[7] / prior), rel=1e-5)
    assert out.decisions[1].score < p[7]
    # top-down: the dog's name and the sofa's top-level name, the same prior weighing the dog's side
    feats = rows({"animal": 0.6, "dog": 0.9}, {"animal": 0.6, "furniture": 0.9})
    top_down = label_tree(feats, np.array([-1, 0]), TAX, FixedBank(), POLICY)
    assert top_down.kinds[1] == "object" and top_down.decisions[1].node.name == "furniture"
    p = softmax([0.0, 0.0, 0.9, 0.6, 0.0])  # head, tail, furniture, animal (its own), background
    prior = 1.0 + (np.exp(NESTED_MARGIN) - 1.0) * (p[0] + p[1] + p[3])
    assert top_down.decisions[1].score == pytest.approx(p[2] / prior, rel=1e-5)


def test_an_unsure_pair_is_not_promoted_by_one_member_when_its_rest_lies_apart():
    """SAM's mask of two dogs apart, its crop unsure; one dog labelled (more than half of the pair), the other a
    child of another region in the tree. The pair's rest -- the second dog -- shows a dog too, but it does not touch
    the first: two things side by side, not the other half of one, so the pair stays unknown. The same geometry
    with the halves touching is one dog."""
    feats = rows({"background": 0.9, "dog": 0.5}, {"dog": 0.9}, {"dog": 0.9})
    apart = label_tree(feats, np.array([-1, 0, -1]), TAX, FixedBank(), SUBTREE,
                       rles=_masks(((0, 11), (13, 20)), (0, 11), (13, 20)), embed=Embedder(rows({"dog": 0.9})))
    assert apart.decisions[0].node is None and apart.kinds == ("unknown", "object", "object")
    touching = label_tree(feats, np.array([-1, 0, -1]), TAX, FixedBank(), SUBTREE,
                          rles=_masks((0, 20), (0, 11), (11, 20)), embed=Embedder(rows({"dog": 0.9})))
    assert touching.decisions[0].node.name == "dog"


def test_a_pairs_unsure_member_counts_by_its_pixels_not_its_place_in_the_tree():
    """Three dogs apart and SAM's masks of two overlapping pairs. The middle dog is too unsure to be labelled and its
    one parent in the tree is the first pair; inside the second pair it still lies by its pixels, so the second
    pair falls apart into two clusters too: a group, not a dog."""
    rles = _masks(((0, 4), (8, 12)), ((8, 12), (16, 20)), (0, 4), (8, 12), (16, 20))
    parents = np.array([-1, -1, 0, 0, 1])  # the middle dog under the first pair only
    feats = rows({"dog": 0.9}, {"dog": 0.9}, {"dog": 0.9}, {"background": 0.9, "dog": 0.5}, {"dog": 0.9})
    out = label_tree(feats, parents, TAX, FixedBank(), SUBTREE, rles=rles)
    assert out.decisions[0].node is None and out.decisions[1].node is None
    assert out.kinds[2] == "object" and out.kinds[4] == "object"


def test_an_unsure_whole_is_that_object_when_touching_pieces_cover_half_and_its_rest_agrees():
    """SAM's near-duplicate of a dog (a little larger than the dog), its crop unsure, and two overlapping pieces of
    the dog that say "dog": together they cover 64 % of it, neither half of it alone. Its rest -- the pixels outside
    both -- shows a dog: the region is the dog. If the rest shows a sofa, it stays unknown."""
    feats = rows({"background": 0.9, "dog": 0.5}, {"dog": 0.9}, {"dog": 0.85, "puppy": 0.9})
    rles = _masks((0, 22), (0, 10), (8, 14))
    parents = np.array([-1, 0, 0])
    same = label_tree(feats, parents, TAX, FixedBank(), SUBTREE, rles=rles, embed=Embedder(rows({"dog": 0.9})))
    assert same.decisions[0].node.path == ("animal", "dog") and same.kinds == ("object", "unknown part", "unknown part")
    alone = label_tree(feats, np.full(3, -1), TAX, FixedBank(), SUBTREE)
    assert same.decisions[0].score == pytest.approx(min(d.path_scores[1] for d in alone.decisions[1:]))
    other = label_tree(feats, parents, TAX, FixedBank(), SUBTREE, rles=rles, embed=Embedder(rows({"sofa": 0.9})))
    assert other.decisions[0].node is None


def test_an_unsure_near_duplicate_with_one_half_is_that_object_when_its_rest_is_too():
    """SAM's mask of a cat a little larger than the cat (22 columns for a 20-column cat), its crop unsure, and one half
    of the cat (10 columns: 45 % of that mask, under half of it) that says "cat". Its rest shows a cat: the region is
    the cat -- a half is cut at half of the object, not of SAM's slightly larger mask of it. A third of it (7
    columns) is too small a piece to decide the whole by its rest."""
    feats = rows({"background": 0.9, "cat": 0.5}, {"cat": 0.9})
    parents = np.array([-1, 0])
    half = label_tree(feats, parents, TAX, FixedBank(), SUBTREE, rles=_masks((0, 22), (0, 10)),
                      embed=Embedder(rows({"cat": 0.9})))
    assert half.decisions[0].node.name == "cat" and half.kinds == ("object", "unknown part")
    third = label_tree(feats, parents, TAX, FixedBank(), SUBTREE, rles=_masks((0, 22), (0, 7)),
                       embed=Embedder(rows({"cat": 0.9})))
    assert third.decisions[0].node is None and third.kinds == ("unknown", "object")


def test_a_labelled_piece_is_taken_by_a_surer_piece_of_another_category_when_its_rest_shows_it_too():
    """A dog (20 columns), a half of it whose noisy crop says "sofa" clearly enough to beat the dog's own labels by
    the nested margin, and a quarter of the dog inside that half (60 % of it) that says "dog", surer. The half's rest
    (its pixels outside the quarter) shows a dog: the half is a piece of the dog, not a sofa lying on it. When the
    rest shows a sofa, the half is a sofa on the dog (its label stands)."""
    feats = rows({"animal": 0.5, "dog": 0.95}, {"furniture": 0.5, "sofa": 0.75}, {"animal": 0.5, "dog": 0.9})
    parents = np.array([-1, 0, 1])
    rles = _masks((0, 20), (0, 10), (0, 6))
    dog = label_tree(feats, parents, TAX, FixedBank(), SUBTREE, rles=rles, embed=Embedder(rows({"dog": 0.9})))
    assert dog.decisions[0].node.name == "dog" and dog.kinds[1] == "unknown part"
    assert dog.decisions[1].node is None  # a piece: no label of its own
    sofa = label_tree(feats, parents, TAX, FixedBank(), SUBTREE, rles=rles, embed=Embedder(rows({"sofa": 0.9})))
    assert sofa.kinds[:2] == ("object", "object") and sofa.decisions[1].node.name == "sofa"


def test_an_objects_label_below_its_category_is_read_from_its_pieces_too():
    """SAM returns a dog with its two halves: three crops of one animal, each with its own noise. The whole's crop
    says "dog" without clearly saying "puppy"; both halves say "puppy". Read together, each weighed by its share
    of the dog's area, the dog is a puppy; the halves stay pieces of it. A sliver (5 % of the area) that says
    "puppy" as loudly counts for its area only, so the dog stays a dog; so does a dog whose halves are not known
    (no masks)."""
    whole = {"animal": 0.3, "dog": 0.9, "puppy": 0.88}
    half = {"animal": 0.3, "dog": 0.85, "puppy": 0.95}
    feats = rows(whole, half, half)
    out = label_tree(feats, np.array([-1, 0, 0]), TAX, FixedBank(), SUBTREE, rles=_masks((0, 20), (0, 10), (10, 20)))
    assert out.decisions[0].node.path == ("animal", "dog", "puppy")
    assert out.kinds == ("object", "unknown part", "unknown part")
    assert len(out.decisions[0].path_scores) == 3 and list(out.decisions[0].path_scores) == sorted(
        out.decisions[0].path_scores, reverse=True)
    assert label_tree(feats, np.array([-1, 0, 0]), TAX, FixedBank(), SUBTREE).decisions[0].node.path == (
        "animal", "dog")
    sliver = label_tree(rows(whole, half), np.array([-1, 0]), TAX, FixedBank(), SUBTREE,
                        rles=_masks((0, 20), (0, 1)))
    assert sliver.decisions[0].node.path == ("animal", "dog") and sliver.kinds == ("object", "unknown part")
