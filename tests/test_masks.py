import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from clipsam.core import masks as M

small_masks = arrays(dtype=bool, shape=st.tuples(st.integers(1, 24), st.integers(1, 24)))


@given(small_masks)
def test_rle_round_trip_is_exact(mask):
    rle = M.encode(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == list(mask.shape)
    np.testing.assert_array_equal(M.decode(rle), mask)
    assert M.area(rle) == int(mask.sum())


@given(small_masks)
def test_bbox_matches_numpy(mask):
    box = M.bbox_xywh(M.encode(mask))
    if not mask.any():
        assert box == (0.0, 0.0, 0.0, 0.0)
        return
    ys, xs = np.nonzero(mask)
    assert box == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)


@settings(max_examples=60)
@given(st.data())
def test_iou_and_intersection_match_numpy(data):
    h, w = data.draw(st.integers(1, 16)), data.draw(st.integers(1, 16))
    a = data.draw(st.lists(arrays(bool, (h, w)), min_size=1, max_size=4))
    b = data.draw(st.lists(arrays(bool, (h, w)), min_size=1, max_size=4))
    ra, rb = [M.encode(x) for x in a], [M.encode(x) for x in b]
    inter = M.intersection_matrix(ra, rb)
    iou = M.iou_matrix(ra, rb)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            assert inter[i, j] == (x & y).sum()
            union = (x | y).sum()
            assert iou[i, j] == pytest.approx((x & y).sum() / union if union else 0.0)


def test_stack_encoding_and_empty_stack():
    stack = np.zeros((3, 5, 6), bool)
    stack[1, 1:3, 2:4] = True
    rles = M.encode(stack)
    assert [M.area(r) for r in rles] == [0, 4, 0]
    assert M.encode(np.zeros((0, 5, 6), bool)) == []
    with pytest.raises(ValueError, match="shape"):
        M.encode(np.zeros(5))


def test_contained_share_and_merge():
    outer = np.zeros((10, 10), bool)
    outer[1:9, 1:9] = True
    inner = np.zeros((10, 10), bool)
    inner[2:4, 2:6] = True
    share = M.contained_share([M.encode(outer), M.encode(inner)])
    assert share[1, 0] == 1.0 and share[0, 1] == pytest.approx(8 / 64)
    assert M.area(M.merge([M.encode(outer), M.encode(inner)])) == 64
    assert M.area(M.merge([M.encode(outer), M.encode(inner)], intersect=True)) == 8
    with pytest.raises(ValueError, match="different sizes"):
        M.iou_matrix([M.encode(outer)], [M.encode(np.zeros((3, 3), bool))])


@given(small_masks, st.integers(1, 4))
def test_resize_by_integer_factor_is_exact_upsampling(mask, k):
    up = M.decode(M.resize(M.encode(mask), (mask.shape[0] * k, mask.shape[1] * k)))
    np.testing.assert_array_equal(up, np.kron(mask, np.ones((k, k), bool)).astype(bool))
    assert M.area(M.resize(M.encode(mask), mask.shape)) == mask.sum()


def test_uncompressed_rle_is_accepted():
    rle = {"size": [2, 3], "counts": [1, 2, 3]}
    assert M.area(rle) == 2


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_tiled_pairwise_intersections_are_exact(data):
    h = data.draw(st.integers(1, 40), label="h")
    w = data.draw(st.integers(1, 40), label="w")
    n = data.draw(st.integers(1, 12), label="n")
    tile = data.draw(st.integers(1, 16), label="tile")  # tiles that do not divide the image, down to 1 pixel
    masks = []
    for _ in range(n):
        kind = data.draw(st.sampled_from(["noise", "box", "empty", "full"]))
        if kind == "noise":
            masks.append(data.draw(arrays(np.bool_, (h, w))))
        elif kind == "box":
            y0, x0 = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
            m = np.zeros((h, w), bool)
            m[y0: data.draw(st.integers(y0 + 1, h)), x0: data.draw(st.integers(x0 + 1, w))] = True
            masks.append(m)
        else:
            masks.append(np.full((h, w), kind == "full"))
    rles = [M.encode(m) for m in masks]
    got = M.pairwise_intersections(rles, tile=tile, method="tiles")
    dense = np.stack(masks).reshape(n, -1).astype(np.int64)
    assert np.array_equal(got, dense @ dense.T)
    assert np.array_equal(M.pairwise_intersections(rles, method="auto"), got)
    assert np.array_equal(got, M.intersection_matrix(rles, rles))  # pycocotools agrees


def test_tiled_intersections_past_the_batch_limit_and_at_scale():
    rng = np.random.default_rng(0)
    masks = rng.random((300, 50, 70)) < 0.3  # 300 noisy masks (> pycocotools' 255 batch), thousands of runs
    masks[::7] = False  # some empty
    rles = M.encode(masks)
    got = M.pairwise_intersections(rles, method="tiles")
    dense = masks.reshape(300, -1).astype(np.float64)
    assert np.array_equal(got, np.rint(dense @ dense.T).astype(np.int64))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_overlaps_give_any_rows_against_any_columns(data):
    """Exact intersections of any subset of masks against any other, in any order, with bands cut narrower than the
    image (a tiny band budget) and tiles that do not divide it."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    h, w, n = (data.draw(st.integers(1, 30), label=k) for k in ("h", "w", "n"))
    masks = rng.random((n, h, w)) < rng.uniform(0, 1, (n, 1, 1))
    rles = [M.encode(m) for m in masks]
    rows = data.draw(st.lists(st.integers(0, n - 1), max_size=n, unique=True), label="rows")
    cols = data.draw(st.lists(st.integers(0, n - 1), max_size=n, unique=True), label="cols")
    overlaps = M.Overlaps(rles, tile=data.draw(st.integers(1, 9), label="tile"), method="tiles")
    overlaps.BAND_BYTES = data.draw(st.sampled_from([1, 64, 1 << 26]), label="band")
    dense = masks.reshape(n, -1).astype(np.int64)
    assert np.array_equal(overlaps.cross(rows, cols), dense[rows] @ dense[cols].T)
    assert np.array_equal(M.Overlaps(rles, method="runs").cross(rows, cols), dense[rows] @ dense[cols].T)
