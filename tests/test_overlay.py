"""Overlays people can read: distinct colours, drawn prompts, captions that never overlap."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from clipsam.core import masks as M
from clipsam.overlay import PALETTE, _font, _place_captions, colour_map, draw_shapes, shapes_of
from clipsam.result import Regions, Segmentation
from clipsam.testing import oracle_segmenter, synthetic_scene


def test_colours_are_distinct_stable_and_fixed_ones_kept():
    keys = [f"animal/k{i}" for i in range(60)]  # more keys than the palette has colours
    colours = colour_map(keys)
    assert len(set(colours.values())) == 60
    assert colour_map(keys) == colours  # deterministic
    assert colour_map(["unknown", "unknown part"]) == {"unknown": (160, 160, 160), "unknown part": (160, 160, 160)}
    fixed = {"animal/dog": PALETTE[0]}
    more = colour_map(["animal/dog", "animal/cat", "#3"], fixed)
    assert more["animal/dog"] == PALETTE[0] and len(set(more.values())) == 3


def _prompted(masks: list[np.ndarray], prompts: dict) -> Segmentation:
    regions = Regions.from_rles([M.encode(m) for m in masks], predicted_iou=np.linspace(0.9, 0.7, len(masks)),
                                stability_score=np.ones(len(masks)), kind=("prompt",) * len(masks))
    return Segmentation(image_size=masks[0].shape, regions=regions, prompts=prompts)


def test_a_clicks_three_masks_differ_and_prompts_are_drawn():
    h, w = 240, 320
    masks = []
    for y0, x0 in ((20, 20), (20, 180), (140, 100)):  # SAM's three answers to one click, here side by side
        m = np.zeros((h, w), bool)
        m[y0: y0 + 80, x0: x0 + 110] = True
        masks.append(m)
    seg = _prompted(masks, {"points": [[150.0, 120.0], [10.0, 230.0]], "labels": [1, 0],
                            "box": [60.0, 10.0, 300.0, 200.0]})
    photo = np.full((h, w, 3), 128, np.uint8)
    drawn = np.asarray(seg.overlay(photo, draw_labels=False)).astype(int)
    tints = [tuple(drawn[y0 + 40, x0 + 55]) for y0, x0 in ((20, 20), (20, 180), (140, 100))]
    assert len(set(tints)) == 3 and all(t != (128, 128, 128) for t in tints)
    assert drawn[120, 150, 1] > 180 and drawn[120, 150, 0] < 120  # the foreground click: a green marker
    assert drawn[230, 10, 0] > 180 and drawn[230, 10, 1] < 120 or tuple(drawn[230, 10]) == (255, 255, 255)
    assert tuple(drawn[100, 60]) == (255, 255, 255) and tuple(drawn[10, 200]) == (255, 255, 255)  # box outline
    assert seg.to_dict()["prompts"]["box"] == [60.0, 10.0, 300.0, 200.0]
    assert Segmentation.from_json(seg.to_json()).prompts == seg.prompts


def test_captions_never_overlap_and_tiny_regions_get_none():
    size = (200, 300)
    font = _font(size)
    items = []
    for k in range(40):  # forty regions with nearly the same box: most captions cannot fit
        m = np.zeros(size, bool)
        m[40 + k % 3: 160, 50 + k % 5: 250] = True
        items.append((f"label{k} 0.9{k % 10}", (255, 0, 0), M.encode(m)))
    tiny = np.zeros(size, bool)
    tiny[5:8, 5:8] = True
    items.append(("a caption far bigger than its region", (0, 255, 0), M.encode(tiny)))
    img = Image.new("RGB", (size[1], size[0]))
    placed = _place_captions(ImageDraw.Draw(img), items, size, font)
    assert 2 <= len(placed) < 40
    for i, a in enumerate(placed):
        assert a[0] >= 0 and a[1] >= 0 and a[2] <= size[1] and a[3] <= size[0]
        for b in placed[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    assert not any(r[0] < 10 and r[1] < 10 for r in placed)  # the tiny region's caption was left out


def test_labelled_scene_colours_by_category_and_empty_results_say_so():
    scene = synthetic_scene()
    seg = oracle_segmenter(scene).segment_everything(scene.image, taxonomy=scene.taxonomy)
    shapes = shapes_of(seg)
    by_label = {r.label: s for r, s in zip(seg.regions, shapes, strict=True)}
    assert by_label["dog"].key == "animal/dog" and by_label["cat"].key == "animal/cat"
    assert by_label["head"].part and by_label["dog"].caption.startswith("dog ")
    wheels = [s for r, s in zip(seg.regions, shapes, strict=True) if r.label == "wheel"]
    assert len(wheels) == 2 and wheels[0].key == wheels[1].key  # one category, one colour
    colours = colour_map([s.key for s in shapes])
    assert colours["animal/dog"] != colours["animal/cat"]  # siblings differ (they were one colour per top level)
    empty = Segmentation(image_size=scene.image.shape[:2])
    drawn = np.asarray(draw_shapes(scene.image, shapes_of(empty)))
    assert not np.array_equal(drawn, scene.image)  # "no regions" is written on it, not the photo unchanged
