"""Semantics, asserted exactly: the synthetic scene with oracle proposer and scorer."""

import json

import numpy as np
import pytest

from clipsam.core import masks as M
from clipsam.result import Segmentation
from clipsam.testing import OracleEmbedder, OracleProposer, oracle_segmenter, synthetic_scene


@pytest.fixture()
def oracle(scene):
    return oracle_segmenter(scene)


def _by_shape(seg, scene):
    """Map each scene shape name to the region with the same mask."""
    out = {}
    for shape in scene.shapes:
        hits = [r for r in seg.regions if M.iou_matrix([r.rle], [shape.rle])[0, 0] == 1.0]
        assert len(hits) == 1, shape.name
        out[shape.name] = hits[0]
    return out


def test_everything_gives_the_exact_labelled_tree(oracle, scene):
    seg = oracle.segment_everything(scene.image)
    assert len(seg) == len(scene.shapes)  # the near-duplicate dog was merged
    regions = _by_shape(seg, scene)
    for shape in scene.shapes:
        r = regions[shape.name]
        assert r.label_path == shape.label_path, shape.name
        assert r.kind == shape.kind, shape.name
        expected_parent = regions[shape.parent].id if shape.parent else None
        assert r.parent_id == expected_parent, shape.name
        assert len(r.path_scores) == len(r.label_path)
    assert regions["blob"].label == "unknown" and regions["blob"].score == 0.0
    assert regions["cat"].kind == "object" and regions["cat"].parent_id == regions["sofa"].id  # object on object
    assert regions["dog ear"].parent_id == regions["dog head"].id
    assert "dog ear" not in [r.label for r in seg]  # parts are labelled by name, path says whose
    assert regions["dog ear"].label == "ear" and regions["dog ear"].label_path == ("animal", "dog", "head", "ear")


def test_tree_text(oracle, scene):
    text = oracle.segment_everything(scene.image).format_tree()
    lines = text.splitlines()
    assert any(line.startswith("dog 1.00 [animal/dog]") for line in lines)
    assert any("└─ head 1.00 [part]" in line for line in lines)
    assert any(line.startswith("   └─ ear 1.00 [part]") for line in lines)
    assert any(line.startswith("unknown 0.00 [unknown]") for line in lines)


def test_ids_are_stable_and_order_independent(scene):
    a = oracle_segmenter(scene).segment_everything(scene.image)
    b = oracle_segmenter(scene).segment_everything(scene.image)
    assert a == b

    class Reversed(OracleProposer):
        def generate(self, image, embedding=None, **params):
            return super().generate(image, embedding, **params)[::-1]

    from clipsam import Segmenter

    c = Segmenter.from_models(Reversed(scene), OracleEmbedder(scene), taxonomy=scene.taxonomy,
                              text_cache=False).segment_everything(scene.image)
    assert [r.to_dict() for r in c] == [r.to_dict() for r in a]


def test_queries_understand_the_taxonomy(oracle, scene):
    animals = oracle.segment(scene.image, "animal")
    assert sorted(r.label for r in animals) == ["cat", "dog", "puppy"]
    assert [r.label for r in oracle.segment(scene.image, "puppy")] == ["puppy"]
    assert sorted(r.label for r in oracle.segment(scene.image, "dog")) == ["dog", "puppy"]
    heads = oracle.segment(scene.image, "head")
    assert [r.label_path for r in heads] == [("animal", "dog", "head")]
    both = oracle.segment(scene.image, "car, wheel")
    assert sorted(r.label for r in both) == ["car", "wheel", "wheel"]
    assert all(r.parent_id == next(x.id for x in both if x.label == "car") for r in both if r.label == "wheel")
    assert len(oracle.segment(scene.image, ["sofa"])) == 1


def test_free_text_and_no_match(scene):
    seg = oracle_segmenter(scene, taxonomy=None)
    cars = seg.segment(scene.image, "car")  # no taxonomy: free text against the negatives
    assert [r.label for r in cars] == ["car"] and cars[0].label_path == ("car",)
    # the wheels lie inside the car: inside a "car" match they are not a second car
    assert len(seg.segment(scene.image, "zebra")) == 0
    tax = oracle_segmenter(scene)
    assert len(tax.segment(scene.image, "zebra")) == 0  # not in the taxonomy, scored as free text: nothing


def test_near_duplicates_inside_a_match_are_not_returned_twice(scene):
    seg = oracle_segmenter(scene, taxonomy=None).segment(scene.image, "dog")
    assert len(seg) == 2  # the dog and the puppy ("mostly puppy, partly dog" scores as dog here), never parts
    assert {r.kind for r in seg} == {"object"}


def test_unknown_objects_and_unknown_parts(scene):
    seg = oracle_segmenter(scene).segment_everything(scene.image)
    assert [r.kind for r in seg if r.label == "unknown"] == ["unknown"]
    no_parts = oracle_segmenter(scene).segment_everything(scene.image, include_parts=False)
    kinds = {r.label: r.kind for r in no_parts}
    assert kinds["unknown part"] == "unknown part" and "head" not in kinds


def test_prompted_segmentation_reuses_the_embedding(oracle, scene):
    dog = scene.shape("dog")
    x, y, w, h = M.bbox_xywh(dog.rle)
    click = oracle.segment_prompt(scene.image, points=[[x + 10, y + h / 2]])
    assert len(click) >= 1 and click[0].kind == "prompt"
    box = oracle.segment_prompt(scene.image, box=[x, y, x + w, y + h])
    assert len(box) == 1 and M.iou_matrix([box[0].rle], [dog.rle])[0, 0] == 1.0
    oracle.segment_everything(scene.image)
    assert oracle.proposer.embed_calls == 1


def test_exports_coco_json_and_overlay(oracle, scene, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    seg = oracle.segment_everything(scene.image)
    coco = seg.to_coco(file_name="scene.png")
    gt = COCO()
    gt.dataset = json.loads(json.dumps(coco))
    gt.createIndex()
    dt = gt.loadRes(coco["annotations"])
    ev = COCOeval(gt, dt, "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)  # predictions against themselves
    by_id = {a["id"]: a for a in coco["annotations"]}
    ear = next(a for a in coco["annotations"] if a["label_path"].endswith("/ear"))
    assert by_id[ear["parent_id"]]["label_path"].endswith("/head")
    cats = {c["label_path"]: c for c in coco["categories"]}
    assert cats["animal/dog"]["supercategory"] == "animal"
    assert len(seg.to_coco(include_unknown=False)["annotations"]) == len(seg) - 1

    back = Segmentation.from_json(seg.to_json())
    assert back == seg
    path = tmp_path / "seg.json"
    seg.to_json(path)
    assert Segmentation.from_json(path) == seg

    overlay = tmp_path / "overlay.png"
    seg.save_overlay(overlay, scene.image)
    from PIL import Image

    drawn = np.asarray(Image.open(overlay))
    assert drawn.shape == scene.image.shape and not np.array_equal(drawn, scene.image)
    with pytest.raises(ValueError, match="needs the image"):
        seg.save_overlay(overlay)


def test_segmentation_container(oracle, scene):
    seg = oracle.segment_everything(scene.image)
    assert isinstance(seg[0].mask(), np.ndarray) and seg[0].mask().shape == scene.image.shape[:2]
    assert seg.masks().shape == (len(seg), *scene.image.shape[:2])
    parts = seg[np.array([r.kind == "part" for r in seg])]
    assert {r.kind for r in parts} == {"part"} and len(parts) == 4
    assert len(seg[:2]) == 2 and len(seg.filter(label="animal", kind="object")) == 3
    assert seg.best.score == 1.0
    assert set(seg.tree[None]) == {r.id for r in seg if r.parent_id is None}


def test_scene_scales(scene):
    big = synthetic_scene(240, 400)
    seg = oracle_segmenter(big).segment_everything(big.image)
    assert sorted(r.label for r in seg) == sorted(r.label for r in oracle_segmenter(scene).segment_everything(
        scene.image))


def test_coarse_to_fine_finds_parts_the_generator_missed(scene):
    from clipsam import Segmenter

    class WholesOnly(OracleProposer):
        def generate(self, image, embedding=None, **params):
            props = super().generate(image, embedding)[: len(scene.shapes)]  # drop the near-duplicate
            return [p for p, s in zip(props, scene.shapes, strict=True) if s.kind != "part"]

    def build():
        return Segmenter.from_models(WholesOnly(scene), OracleEmbedder(scene), taxonomy=scene.taxonomy,
                                     text_cache=False)

    coarse = build().segment_everything(scene.image)
    assert not any(r.kind == "part" for r in coarse)
    seg = build()
    fine = seg.segment_everything(scene.image, part_points=64)
    reference = oracle_segmenter(scene).segment_everything(scene.image)
    assert [(r.label_path, r.kind, r.parent_id) for r in fine] == [(r.label_path, r.kind, r.parent_id)
                                                                    for r in reference]
    assert seg.proposer.embed_calls == 1  # parts were prompted on the cached embedding


def test_refinement_relabels_and_renests_the_refined_masks(scene):
    """refine=True used to swap masks but keep the labels chosen for the old ones: here SAM's box refinement of the
    puppy returns the dog, so a 'puppy' with the dog's mask came back."""
    import numpy as np

    from clipsam.core import masks as M
    from clipsam.models.base import PromptMasks
    from clipsam.segmenter import Segmenter
    from clipsam.testing import OracleEmbedder, OracleProposer

    dog = scene.shape("dog")

    class BoxToDog(OracleProposer):
        def predict(self, embedding, *, box=None, **kwargs):
            if box is not None:
                m = M.decode(dog.rle)
                return PromptMasks(m[None], np.ones(1, np.float32), np.zeros((1, 16, 16), np.float32))
            return super().predict(embedding, box=box, **kwargs)

    seg = Segmenter.from_models(BoxToDog(scene), OracleEmbedder(scene), taxonomy=scene.taxonomy, text_cache=False)
    plain = seg.segment(scene.image, "puppy")
    assert [r.label for r in plain] == ["puppy"]
    refined = seg.segment(scene.image, "puppy", refine=True)
    for r in refined:  # whatever comes back is labelled for the mask it has
        truth = max(scene.shapes, key=lambda s: M.iou_matrix([r.rle], [s.rle])[0, 0])
        assert r.label == truth.name, (r.label, truth.name)
    assert "puppy" not in [r.label for r in refined]
    both = seg.segment(scene.image, "dog, puppy", refine=True)
    assert [r.label for r in both] == ["dog"]  # the refined puppy is the dog: one region, labelled dog
    ids = {r.id for r in both}
    assert all(r.parent_id is None or r.parent_id in ids for r in both)
