"""Label Studio interop without a server: its brush RLE, labeling configs, regions as results with the hierarchy,
smart-tool contexts, and ``clipsam label --format label-studio``. The real Label Studio server is driven in
``test_labelstudio_server.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.draw import polygon as fill_polygon

from clipsam.core import lsrle
from clipsam.core import masks as M
from clipsam.errors import ConfigError, PromptError
from clipsam.labelstudio import PART_OF, LabelConfig, context_prompts, label_config, prediction, region_results
from clipsam.labelstudio.tasks import coco_tasks
from clipsam.testing.oracle import oracle_segmenter, synthetic_scene

HERE = Path(__file__).parent


# -- the brush RLE -------------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_brush_rle_round_trip(mask):
    assert np.array_equal(lsrle.decode(lsrle.encode(mask), *mask.shape), mask)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5000), (5000, 1), (300, 400)])
@pytest.mark.parametrize("fill", ["empty", "full", "strip"])
def test_brush_rle_strips_and_long_runs(shape, fill):
    """Runs longer than the largest run-length field (2^16 values = 16,384 pixels) are split, 1-pixel strips kept."""
    m = np.zeros(shape, bool)
    if fill == "full":
        m[:] = True
    elif fill == "strip":
        m[:, shape[1] // 2] = True
    rle = lsrle.encode(m)
    assert all(0 <= b <= 255 for b in rle)
    assert np.array_equal(lsrle.decode(rle, *shape), m)


def test_brush_rle_reads_label_studios_own_encoder():
    """A vector written by Label Studio's converter (label-studio-sdk's mask2rle) decodes to its mask, and the mask
    encoded by clipsam decodes to the same values as Label Studio's."""
    ref = json.loads((HERE / "labelstudio" / "sdk_rle.json").read_text())
    mask = np.array([[c == "1" for c in row] for row in ref["mask_rows"]])
    assert np.array_equal(lsrle.decode(ref["rle"], ref["height"], ref["width"]), mask)
    assert np.array_equal(lsrle.decode_values(lsrle.encode(mask)), lsrle.decode_values(ref["rle"]))


def test_brush_rle_refuses_the_wrong_size():
    rle = lsrle.encode(np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="holds 80 values, a 5x5 RGBA mask has 100"):
        lsrle.decode(rle, 5, 5)
    with pytest.raises(ValueError, match="middle of a chunk"):
        lsrle.decode(rle[:8], 4, 5)


# -- configs ---------------------------------------------------------------------------------------------------------
def test_label_config_for_a_taxonomy_reads_back():
    scene = synthetic_scene()
    cfg = LabelConfig.parse(label_config(scene.taxonomy))
    names = [n.name for n in scene.taxonomy]
    assert set(cfg.labels) == set(names) | {"unknown", "unknown part"}
    assert len(cfg.labels) == len(set(cfg.labels))  # a name under several wholes is one label
    assert (cfg.shape, cfg.image, cfg.image_key, cfg.path) == ("brush", "image", "image", "label_path")
    assert cfg.relations == (PART_OF,) and cfg.clicks == ("click",) and cfg.boxes == ("box",)
    poly = LabelConfig.parse(label_config(scene.taxonomy, shape="polygon", smart=False, unknown=False))
    assert poly.shape == "polygon" and not poly.clicks and "unknown" not in poly.labels


def test_label_config_escapes_label_names():
    from clipsam.core.taxonomy import Taxonomy

    tax = Taxonomy.from_dict({"name": "odd", "nodes": [{"name": 'a "quoted" <b> & c'}, {"name": "d"}]})
    cfg = LabelConfig.parse(label_config(tax))
    assert 'a "quoted" <b> & c' in cfg.labels


@pytest.mark.parametrize("xml, message", [
    ("<View><Image", "not valid XML"),
    ('<View><Text name="t" value="$text"/></View>', "no <Image>"),
    ('<View><Image name="image" value="$image"/><Choices name="c" toName="image"/></View>', "no <BrushLabels>"),
    ('<View><Image name="image" value="$image"/><BrushLabels name="b" toName="image"/></View>', "no <Label>"),
    ('<View><Image name="image" value="image"/></View>', "must name a task field"),
])
def test_a_config_clipsam_cannot_fill_is_refused(xml, message):
    with pytest.raises(ConfigError, match=message):
        LabelConfig.parse(xml)


def test_labels_map_to_the_deepest_label_the_project_has():
    xml = ('<View><Image name="img" value="$photo"/><PolygonLabels name="p" toName="img">'
           '<Label value="Dog"/><Label value="animal"/><Label value="unknown"/></PolygonLabels></View>')
    cfg = LabelConfig.parse(xml)
    assert cfg.image_key == "photo" and cfg.shape == "polygon" and not cfg.has_relations
    assert cfg.label_for("puppy", ("animal", "dog", "puppy")) == "Dog"
    assert cfg.label_for("cat", ("animal", "cat")) == "animal"
    assert cfg.label_for("unknown", ()) == "unknown"
    assert cfg.label_for("sofa", ("furniture", "sofa")) is None
    assert cfg.label_for("head", ("animal", "dog", "head"), "part") is None  # a dog's head is no dog


# -- results -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene_result():
    scene = synthetic_scene()
    return scene, oracle_segmenter(scene).segment_everything(scene.image)


def test_every_region_becomes_a_brush_result_with_its_path_and_its_parts_related(scene_result):
    scene, seg = scene_result
    cfg = LabelConfig.parse(label_config(scene.taxonomy))
    results = region_results(seg, cfg)
    shapes = {r["id"]: r for r in results if r["type"] == "brushlabels"}
    paths = {r["id"]: r["value"]["text"] for r in results if r["type"] == "textarea"}
    relations = {(r["from_id"], r["to_id"]) for r in results if r["type"] == "relation"}
    assert len(shapes) == len(seg.regions)  # every region, unknown included (the project offers unknown)
    by_id = {r.id: r for r in seg.regions}
    for rid, res in shapes.items():
        region = by_id[int(rid[2:])]
        assert np.array_equal(lsrle.decode(res["value"]["rle"], res["original_height"], res["original_width"]),
                              region.mask())
        assert res["value"]["brushlabels"] == [region.label]
        assert res["score"] == pytest.approx(region.score)
        assert paths.get(rid) == ([region.label_path_str] if region.label_path else None)
    parts = {(f"cs{r.id}", f"cs{r.parent_id}") for r in seg.regions if r.kind == "part"}
    assert parts and relations == parts  # head -> dog, ear -> head, wheels -> car; the cat on the sofa is no part
    assert all(r.get("labels") == [PART_OF] for r in results if r["type"] == "relation")


def test_a_taxonomy_tag_carries_each_regions_path_as_a_choice_in_the_tree(scene_result):
    scene, seg = scene_result
    cfg = LabelConfig.parse(label_config(scene.taxonomy, path="taxonomy"))
    assert cfg.tree == "label_path" and cfg.path is None
    assert cfg.tree_paths == {tuple(n.path) for n in scene.taxonomy}  # the whole tree, parts included
    results = region_results(seg, cfg)
    chosen = {r["id"]: r["value"]["taxonomy"] for r in results if r["type"] == "taxonomy"}
    assert chosen == {f"cs{r.id}": [list(r.label_path)] for r in seg.regions if r.label_path}
    assert all(r["from_name"] == "label_path" and r["to_name"] == "image" for r in results if r["type"] == "taxonomy")
    xml = ('<View><Image name="image" value="$image"/><BrushLabels name="label" toName="image"><Label value="dog"/>'
           '<Label value="ear"/></BrushLabels><Taxonomy name="t" toName="image" perRegion="true">'
           '<Choice value="animal"><Choice value="dog"/></Choice></Taxonomy></View>')
    short = LabelConfig.parse(xml)  # a hand-made tree without parts: the longest start of each path it offers
    assert short.tree_path(("animal", "dog", "head", "ear")) == ["animal", "dog"]
    assert short.tree_path(("vehicle", "car")) is None
    chosen = {r["id"]: r["value"]["taxonomy"] for r in region_results(seg, short) if r["type"] == "taxonomy"}
    ear = next(r for r in seg.regions if r.label == "ear")
    assert chosen[f"cs{ear.id}"] == [["animal", "dog"]]
    with pytest.raises(ConfigError, match="path must be text or taxonomy"):
        label_config(scene.taxonomy, path="tree")


def test_regions_outside_the_projects_labels_are_left_out_and_parts_relate_to_the_nearest_kept(scene_result):
    _, seg = scene_result
    xml = ('<View><Image name="image" value="$image"/><BrushLabels name="label" toName="image">'
           '<Label value="dog"/><Label value="ear"/></BrushLabels><Relations><Relation value="part of"/></Relations>'
           '</View>')
    results = region_results(seg, LabelConfig.parse(xml))
    labels = sorted(r["value"]["brushlabels"][0] for r in results if r["type"] == "brushlabels")
    assert labels == ["dog", "dog", "ear"]  # the dog, the puppy (a dog), the ear; not the head, sofa, car
    ear = next(r for r in seg.regions if r.label == "ear")
    dog = next(r for r in seg.regions if r.label == "dog")
    assert [(r["from_id"], r["to_id"]) for r in results if r["type"] == "relation"] == [(f"cs{ear.id}", f"cs{dog.id}")]


def test_polygon_results_fill_back_to_the_mask(scene_result):
    scene, seg = scene_result
    cfg = LabelConfig.parse(label_config(scene.taxonomy, shape="polygon"))
    results = [r for r in region_results(seg, cfg) if r["type"] == "polygonlabels"]
    h, w = seg.image_size
    by_region: dict[int, np.ndarray] = {}
    for r in results:
        pts = np.asarray(r["value"]["points"])
        assert (pts >= 0).all() and (pts <= 100).all()
        rid = int(r["id"][2:].split("-")[0])
        # pixel centres inside the polygon, as a viewer fills it
        rr, cc = fill_polygon(pts[:, 1] * h / 100 - 0.5, pts[:, 0] * w / 100 - 0.5, (h, w))
        by_region.setdefault(rid, np.zeros((h, w), bool))[rr, cc] = True
    for region in seg.regions:
        iou = M.iou_matrix([M.encode(by_region[region.id])], [region.rle])[0, 0]
        assert iou > 0.85, (region.label, iou)


def test_prediction_score_is_the_mean_region_score(scene_result):
    scene, seg = scene_result
    pred = prediction(seg, LabelConfig.parse(label_config(scene.taxonomy)), "v1")
    assert pred["model_version"] == "v1"
    assert pred["score"] == pytest.approx(np.mean([r.score for r in seg.regions]))


# -- smart tools ---------------------------------------------------------------------------------------------------
def test_context_clicks_and_box_in_pixels():
    ctx = {"result": [
        {"type": "keypointlabels", "is_positive": True, "value": {"x": 25.0, "y": 50.0, "keypointlabels": ["cat"]}},
        {"type": "keypointlabels", "is_positive": False, "value": {"x": 50.0, "y": 10.0, "keypointlabels": ["cat"]}},
        {"type": "rectanglelabels", "value": {"x": 10.0, "y": 20.0, "width": 50.0, "height": 25.0}},
    ]}
    points, labels, box, chosen = context_prompts(ctx, (120, 200))
    assert points.tolist() == [[50.0, 60.0], [100.0, 12.0]] and labels.tolist() == [1, 0]
    assert box.tolist() == [20.0, 24.0, 120.0, 54.0] and chosen == "cat"


@pytest.mark.parametrize("ctx", [None, {"result": []}, {"result": [{"type": "choices", "value": {"choices": ["a"]}}]}])
def test_a_context_without_clicks_is_refused(ctx):
    with pytest.raises(PromptError, match="no keypoint or rectangle"):
        context_prompts(ctx, (10, 10))


def test_a_click_without_coordinates_is_refused():
    with pytest.raises(PromptError, match="numeric x/y"):
        context_prompts({"result": [{"type": "keypointlabels", "value": {"x": "left"}}]}, (10, 10))


# -- task files ----------------------------------------------------------------------------------------------------
def test_label_run_writes_label_studio_tasks_matching_the_coco(tmp_path):
    from PIL import Image

    from clipsam.testing import oracle_label_run

    scene = synthetic_scene()
    photos = tmp_path / "photos"
    (photos / "sub dir").mkdir(parents=True)
    Image.fromarray(scene.image).save(photos / "sub dir" / "scène 1.png")
    coco = oracle_label_run(photos, tmp_path / "out", scene, formats=("label-studio",))
    tasks = json.loads((tmp_path / "out" / "label-studio.json").read_text())
    cfg = LabelConfig.parse((tmp_path / "out" / "label-studio-config.xml").read_text())
    assert len(tasks) == 1 and tasks[0]["data"]["image"] == "/data/local-files/?d=sub%20dir/sc%C3%A8ne%201.png"
    result = tasks[0]["predictions"][0]["result"]
    shapes = [r for r in result if r["type"] == "brushlabels"]
    assert len(shapes) == len(coco["annotations"])
    for ann, res in zip(sorted(coco["annotations"], key=lambda a: a["id"]), shapes, strict=True):
        assert np.array_equal(lsrle.decode(res["value"]["rle"], res["original_height"], res["original_width"]),
                              M.decode({"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"]}))
    parts = [a for a in coco["annotations"] if a["kind"] == "part"]
    relations = [r for r in result if r["type"] == "relation"]
    assert len(relations) == len(parts) > 0
    assert tasks == coco_tasks(coco, cfg, model_version="clipsam-oracle-oracle")
