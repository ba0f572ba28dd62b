import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from clipsam.core import masks as M
from clipsam.core import tree as T


@st.composite
def rect_masks(draw, max_n=8, h=24, w=24):
    n = draw(st.integers(1, max_n))
    out = []
    for _ in range(n):
        y0, x0 = draw(st.integers(0, h - 2)), draw(st.integers(0, w - 2))
        y1, x1 = draw(st.integers(y0 + 1, h)), draw(st.integers(x0 + 1, w))
        m = np.zeros((h, w), bool)
        m[y0:y1, x0:x1] = True
        out.append(M.encode(m))
    return out


@settings(max_examples=80, deadline=None)
@given(rect_masks(), st.sampled_from([0.6, 0.9, 1.0]))
def test_every_child_lies_in_its_parent_to_the_configured_share(rles, containment):
    parent = T.build_parents(rles, containment)
    share = M.contained_share(rles)
    areas = M.area(rles)
    for i, p in enumerate(parent):
        if p >= 0:
            assert share[i, p] >= containment
            assert areas[p] >= areas[i]
    T.depths(parent)  # terminates: a forest, no cycles


@settings(max_examples=60, deadline=None)
@given(rect_masks(), st.randoms(use_true_random=False))
def test_tree_and_dedupe_do_not_depend_on_input_order(rles, rnd):
    quality = [float(i % 3) for i in range(len(rles))]
    perm = list(range(len(rles)))
    rnd.shuffle(perm)
    shuffled = [rles[i] for i in perm]
    shuffled_q = [quality[i] for i in perm]

    def canonical(rs, qs):
        keep = T.dedupe(rs, qs, 0.9)
        kept = [rs[i] for i in keep]
        order = T.canonical_order(kept)
        kept = [kept[i] for i in order]
        parents = T.build_parents(kept, 0.9)
        return [r["counts"] for r in kept], parents.tolist()

    a = canonical(rles, quality)
    b = canonical(shuffled, shuffled_q)
    # identical masks with different quality may survive under either index, but the tree is the same
    assert a[1] == b[1]
    assert sorted(a[0]) == sorted(b[0]) and a[0] == b[0]


def test_dedupe_keeps_the_better_of_near_duplicates_and_drops_empty():
    a = np.zeros((20, 20), bool)
    a[2:18, 2:18] = True
    b = a.copy()
    b[2, 2] = False
    empty = np.zeros((20, 20), bool)
    keep = T.dedupe([M.encode(a), M.encode(b), M.encode(empty)], [0.5, 0.9, 1.0], 0.9)
    assert keep.tolist() == [1]


def test_nested_squares_form_a_chain():
    rles = []
    for k in range(4):
        m = np.zeros((32, 32), bool)
        m[k * 3: 32 - k * 3, k * 3: 32 - k * 3] = True
        rles.append(M.encode(m))
    parent = T.build_parents(rles[::-1], 0.95)  # input smallest first
    order = T.canonical_order(rles[::-1])
    assert [M.area(rles[::-1][i]) for i in order] == sorted((M.area(r) for r in rles), reverse=True)
    assert parent.tolist() == [1, 2, 3, -1]  # each square's parent is the next larger one
    assert sorted(T.depths(parent).tolist()) == [0, 1, 2, 3]


@st.composite
def grid_like_masks(draw, h=20, w=24):
    """A few base masks (noise or boxes), each returned several times less a few pixels, plus empties: SAM's grid,
    which returns each region many times."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bases = []
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.booleans()):
            bases.append(rng.random((h, w)) < rng.uniform(0.1, 0.9))
        else:
            m = np.zeros((h, w), bool)
            y0, x0 = rng.integers(0, h - 1), rng.integers(0, w - 1)
            m[y0:rng.integers(y0 + 1, h + 1), x0:rng.integers(x0 + 1, w + 1)] = True
            bases.append(m)
    masks = [bases[rng.integers(len(bases))] & (rng.random((h, w)) >= draw(st.sampled_from([0.0, 0.02, 0.2])))
             for _ in range(draw(st.integers(1, 30)))]
    return masks, [round(float(v), 1) for v in rng.random(len(masks))]  # rounded: ties in quality happen


@settings(max_examples=60, deadline=None)
@given(grid_like_masks(), st.sampled_from([1, 3, 128]), st.sampled_from(["tiles", "runs"]),
       st.sampled_from([0.5, 0.9, 1.0]))
def test_dedupe_against_the_kept_is_dedupe_with_the_kept_intersections(masks_quality, chunk, method, iou):
    """Comparing each mask with the masks already kept (and its chunk) keeps exactly what comparing every pair
    does, and returns the kept masks' exact pairwise intersections, whatever the chunk."""
    masks, quality = masks_quality
    rles = [M.encode(m) for m in masks]
    keep, inter = T.dedupe_kept(rles, quality, iou, chunk=chunk, method=method)
    assert np.array_equal(keep, T.dedupe(rles, quality, iou))
    dense = np.stack(masks)[keep].reshape(len(keep), -1).astype(np.int64)
    assert np.array_equal(inter, dense @ dense.T)
