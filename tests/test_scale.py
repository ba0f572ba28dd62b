"""Real scale: past pycocotools' 255-mask batch limit, through every public path, and images of any shape."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from clipsam.core import masks as M
from clipsam.core import tree as T
from clipsam.models.base import PromptMasks, Proposal
from clipsam.testing import tiny_segmenter

N_MASKS = 1200


class ManyMasksProposer:
    """Proposes *n* distinct random rectangles and ellipses on any image: real-scale candidate counts (a busy photo
    with real SAM weights, or crop layers, gives hundreds to thousands) that the tiny random SAM never reaches."""

    name = "many-masks"

    def __init__(self, n: int = N_MASKS, seed: int = 0) -> None:
        self.n, self.seed = n, seed

    def embed(self, image):
        return {"shape": image.shape[:2]}

    def masks(self, size):
        h, w = size
        rng = np.random.default_rng(self.seed)
        yy, xx = np.mgrid[:h, :w]
        out = []
        for k in range(self.n):
            y0, x0 = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
            y1, x1 = int(rng.integers(y0 + 3, h + 1)), int(rng.integers(x0 + 3, w + 1))
            if k % 2:
                cy, cx, ry, rx = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) / 2, (x1 - x0) / 2
                m = ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1.0
            else:
                m = np.zeros((h, w), dtype=bool)
                m[y0:y1, x0:x1] = True
            out.append(m)
        return out

    def generate(self, image, embedding=None, **params):
        return [Proposal(M.encode(m), 0.9, 0.95) for m in self.masks(image.shape[:2])]

    def predict(self, embedding, *, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output=True):
        m = self.masks(embedding["shape"])[0]
        return PromptMasks(m[None], np.ones(1, np.float32), np.zeros((1, 16, 16), np.float32))


@pytest.fixture(scope="module")
def many():
    """A segmenter on the many-masks proposer and the tiny real open_clip model."""
    from clipsam.models.build import build_embedder
    from clipsam.segmenter import Segmenter

    return Segmenter.from_models(ManyMasksProposer(), build_embedder("tiny-random", "cpu"), text_cache=False,
                                 duplicate_iou=0.98, device="cpu")


@pytest.fixture(scope="module")
def photo():
    from skimage import data

    return np.ascontiguousarray(data.chelsea()[:160, :240])


@pytest.mark.slow
def test_mask_helpers_past_the_pycocotools_batch_limit():
    rng = np.random.default_rng(1)
    dense = rng.random((N_MASKS, 24, 31)) < 0.3
    rles = M.encode(dense)
    assert len(rles) == N_MASKS
    assert (M.area(rles) == dense.reshape(N_MASKS, -1).sum(1)).all()
    boxes = M.bbox_xywh(rles)
    assert boxes.shape == (N_MASKS, 4)
    for i in (0, 255, 256, 511, N_MASKS - 1):
        ys, xs = np.nonzero(dense[i])
        assert tuple(boxes[i]) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    inter = M.intersection_matrix(rles[:300], rles)
    flat = dense.reshape(N_MASKS, -1).astype(np.int64)
    assert (inter == flat[:300] @ flat.T).all()
    assert (M.decode(M.merge(rles)) == dense.any(0)).all()
    parents = T.build_parents(rles)
    assert parents.shape == (N_MASKS,)


def test_tiny_sam_with_hundreds_of_proposals(photo):
    """The issue's reproduction: >= 256 candidate masks used to crash every labelled path."""
    seg = tiny_segmenter(taxonomy="coco")
    params = dict(points_per_side=12, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    crop = photo[:96, :96]
    proposals = seg.proposer.generate(crop, seg.proposer.embed(crop), **params)
    assert len(proposals) >= 256
    everything = seg.segment_everything(crop, **params)
    assert len(everything) > 0 and everything.image_size == (96, 96)
    seg.segment(crop, "cat", **params)  # ran to the end


@pytest.mark.slow
def test_every_public_path_with_a_thousand_masks(many, photo, tmp_path):
    from clipsam.dataset import Filters, LabelJob, list_images, run_local
    from clipsam.search import RegionIndex

    everything = many.segment_everything(photo, taxonomy="coco")
    assert len(everything) >= 1000
    assert all(r.rle["size"] == [160, 240] for r in everything)
    ids = {r.id for r in everything}
    assert all(r.parent_id is None or r.parent_id in ids for r in everything)
    assert sum(r.parent_id is not None for r in everything) > 100  # random boxes nest: a real tree

    unlabelled = many.segment_everything(photo)
    assert len(unlabelled) == len(everything)
    many.segment(photo, "cat, dog")
    many.segment(photo, "animal", taxonomy="coco")

    Image.fromarray(photo).save(tmp_path / "photo.png")
    items = list_images(tmp_path)
    job = LabelJob(tmp_path / "labels", "coco", filters=Filters(include_unknown=True),
                   segmenter_spec={"sam": "x", "clip": "y"})
    record = job.prepare()
    run_local(job, items, segmenter=many)
    job.finish(record, {})
    coco = json.loads((tmp_path / "labels" / "annotations.json").read_text())
    assert len(coco["annotations"]) == len(everything)

    index = RegionIndex(tmp_path / "db", many, taxonomy="coco")
    counts = index.add([tmp_path / "photo.png"])
    assert counts["regions"] == len(everything) and len(index) == len(everything)


STRIPS = [((10, 4059), 1024), ((4059, 10), 1024), ((3, 20000), 1024), ((1, 5000), 1024), ((5000, 1), 1024),
          ((10, 4059), None), ((1, 5000), None), ((3, 20000), 4096)]  # max_side None / 4096: SAM's resize pads


@pytest.mark.slow
@pytest.mark.parametrize("shape, max_side", STRIPS)
def test_extreme_aspect_ratios_get_masks_like_any_image(tiny, shape, max_side):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    seg = tiny_segmenter(max_side=max_side)
    everything = seg.segment_everything(image)
    assert everything.image_size == shape and len(everything) > 0
    assert all(tuple(r.rle["size"]) == shape for r in everything)
    seg.segment(image, "cat")
    clicked = seg.segment_prompt(image, points=[[shape[1] / 2, shape[0] / 2]])
    assert len(clicked) == 3 and clicked.masks().shape[1:] == shape


def test_pad_for_sam_keeps_every_side_at_least_one_pixel():
    from segment_anything.utils.transforms import ResizeLongestSide

    from clipsam.models.sam import pad_for_sam

    for h, w, target in [(3, 20000, 1024), (10, 4059, 64), (1, 1, 64), (5000, 1, 1024), (300, 451, 64)]:
        padded = pad_for_sam(np.zeros((h, w, 3), np.uint8), target)
        new_h, new_w = ResizeLongestSide.get_preprocess_shape(padded.shape[0], padded.shape[1], target)
        assert new_h >= 1 and new_w >= 1
        assert padded.shape[0] >= h and padded.shape[1] >= w
        if min(h, w) * target / max(h, w) >= 1:
            assert padded.shape[:2] == (h, w)  # ordinary images are not touched


@pytest.mark.slow
def test_label_job_keeps_strips_and_megapixel_images(tmp_path):
    """A folder with strips and a 12 MP photo: every image labelled, none lost to an error."""
    from skimage import data

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (10, 4059, 3), dtype=np.uint8)).save(src / "strip.png")
    Image.fromarray(rng.integers(0, 255, (20000, 3, 3), dtype=np.uint8)).save(src / "tall.png")
    big = np.asarray(Image.fromarray(data.chelsea()).resize((4240, 2832)))  # 12.0 MP
    Image.fromarray(big).save(src / "big.jpg", quality=90)
    from clipsam.dataset import Filters, LabelJob, list_images, run_local

    job = LabelJob(tmp_path / "out", "coco", filters=Filters(include_unknown=True),
                   segmenter_spec={"sam": "tiny-random", "clip": "tiny-random", "text_cache": False})
    record = job.prepare()
    results = []
    run_local(job, list_images(src), on_result=results.append)
    job.finish(record, {})
    assert [r["status"] for r in results] == ["done"] * 3, results
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    sizes = {im["file_name"]: (im["height"], im["width"]) for im in coco["images"]}
    assert sizes == {"strip.png": (10, 4059), "tall.png": (20000, 3), "big.jpg": (2832, 4240)}
    per_image = {im["id"]: 0 for im in coco["images"]}
    for a in coco["annotations"]:
        per_image[a["image_id"]] += 1
        assert a["segmentation"]["size"] == list(sizes[next(i["file_name"] for i in coco["images"]
                                                             if i["id"] == a["image_id"])])
    assert all(n > 0 for n in per_image.values())
