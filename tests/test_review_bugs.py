"""Bugs from issue 24's code review, fixed with tests that fail on the code before (items 1, 5, 6 and 7 of its list;
item 1, a region database whose first image had no region, is in test_safety_inputs.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsam.cli import app
from clipsam.core import masks as M
from clipsam.core.labels import TextBank
from clipsam.result import Region, Segmentation


def _box(h: int, w: int, y0: int, x0: int, y1: int, x1: int) -> M.RLE:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return M.encode(m)


def test_to_coco_without_unknown_relinks_parents_like_the_label_filter():
    """Item 5: an ear under an unknown part of the dog keeps the dog as its parent when unknown regions are left
    out (it used to lose its parent: ``None``)."""
    rles = [_box(40, 40, 0, 0, 40, 40), _box(40, 40, 0, 0, 20, 20), _box(40, 40, 0, 0, 5, 5)]
    regions = [Region(0, rles[0], M.bbox_xywh(rles[0]), 1600, "dog", 0.9, ("animal", "dog"), (0.9, 0.9), "object"),
               Region(1, rles[1], M.bbox_xywh(rles[1]), 400, "unknown part", 0.0, (), (), "unknown part", parent_id=0),
               Region(2, rles[2], M.bbox_xywh(rles[2]), 25, "ear", 0.8, ("animal", "dog", "ear"), (0.9, 0.9, 0.8),
                      "part", parent_id=1)]
    coco = Segmentation((40, 40), regions).to_coco(include_unknown=False)
    by_path = {a["label_path"]: a for a in coco["annotations"]}
    assert set(by_path) == {"animal/dog", "animal/dog/ear"}
    assert by_path["animal/dog/ear"]["parent_id"] == by_path["animal/dog"]["id"]


def test_a_label_with_undecodable_bytes_is_cached_like_any_other(tmp_path, tiny):
    """Item 6: a label from a command line with bytes that are not UTF-8 (kept as lone surrogates) crashed the
    text-embedding disk cache's key (UnicodeEncodeError)."""
    class Keyed:  # the tiny embedder, with the cache key a real model has
        cache_key = "tiny-random-test"

        def __getattr__(self, name):
            return getattr(tiny.embedder, name)

    bank = TextBank(Keyed(), cache_dir=tmp_path)
    assert bank.cache_dir is not None
    odd = "caf\udce9"
    first = bank.embed([(odd,), ("cafe",)])
    again = TextBank(Keyed(), cache_dir=tmp_path).embed([(odd,)])
    assert np.allclose(first[0], again[0]) and len(list(bank.cache_dir.glob("*.npy"))) == 2


def test_eval_names_the_image_and_both_sizes_when_masks_do_not_fit(tmp_path, scene):
    """Item 7: a prediction whose masks are not the size of the ground truth's image (EXIF rotation) was a raw
    IndexError; it is one line naming the image and both sizes."""
    from clipsam.testing import oracle_label_run

    (tmp_path / "photos").mkdir()
    Image.fromarray(scene.image).save(tmp_path / "photos" / "a.png")
    oracle_label_run(tmp_path / "photos", tmp_path / "out", scene)
    gt = json.loads((tmp_path / "out" / "annotations.json").read_text())
    for im in gt["images"]:
        im["height"], im["width"] = im["width"], im["height"]  # stored rotated
    for a in gt["annotations"]:
        a["segmentation"] = M.encode(M.decode(a["segmentation"]).T)
        a["bbox"] = [float(v) for v in M.bbox_xywh(a["segmentation"])]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "out" / "annotations.json"), str(tmp_path / "gt.json")])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "'a.png'" in text and "200x120" in text and "120x200" in text and "unexpected" not in text


@pytest.mark.parametrize("size", [(120, 200)])
def test_eval_of_matching_sizes_still_scores(tmp_path, scene, size):
    from clipsam.testing import oracle_label_run

    (tmp_path / "photos").mkdir()
    Image.fromarray(scene.image).save(tmp_path / "photos" / "a.png")
    oracle_label_run(tmp_path / "photos", tmp_path / "out", scene)
    ann = str(tmp_path / "out" / "annotations.json")
    res = CliRunner().invoke(app, ["eval", ann, ann, "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["miou"] == pytest.approx(1.0)


def _prompt_and_everything(seg, image):
    click = seg.segment_prompt(image, points=[[image.shape[1] // 3, image.shape[0] // 2]])
    every = seg.segment_everything(image)
    return ([r.rle["counts"] for r in click], [round(float(v), 6) for v in click.regions.predicted_iou],
            [(r.rle["counts"], r.label, r.parent_id) for r in every])


@pytest.mark.parametrize("warm", [False, True], ids=["first-use-in-threads", "models-built"])
def test_one_segmenter_shared_by_threads_gives_the_serial_results(warm):
    """Item 2: 4 threads x 20 images on one segmenter, first used by the threads themselves, get exactly what one
    thread gets. The SAM adapters shared one predictor through reset/restore, the embedding caches were unlocked,
    and the lazily built models could be built by several threads at once, interleaving their random weights."""
    from concurrent.futures import ThreadPoolExecutor

    from clipsam.testing import tiny_segmenter

    rng = np.random.default_rng(7)
    images = [(rng.random((48 + 4 * (k % 5), 64 + 4 * (k % 7), 3)) * 255).astype(np.uint8) for k in range(20)]
    serial = [_prompt_and_everything(tiny_segmenter(seed=3), im) for im in images]
    shared = tiny_segmenter(seed=3)
    if warm:  # models built before the threads start: what is left is the shared predictor and the caches
        _prompt_and_everything(shared, images[0][:32, :32])
    order = [k for _ in range(4) for k in rng.permutation(len(images))]  # every image 4 times, interleaved
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda k: (k, _prompt_and_everything(shared, images[k])), order))
    wrong = [k for k, result in got if result != serial[k]]
    assert not wrong, f"{len(wrong)} of {len(got)} results differ from the serial ones"


def test_adopting_another_model_never_serves_the_old_models_embedding(scene):
    """Item 3: the embedding cache was keyed by the image only, so after ``adopt()`` the old model's embedding came
    back for an image seen before."""
    from clipsam.testing import tiny_sam, tiny_segmenter

    seg = tiny_segmenter(seed=0)
    before = seg.segment_prompt(scene.image, points=[[60, 60]])
    seg.adopt(sam=tiny_sam(seed=5))
    after = seg.segment_prompt(scene.image, points=[[60, 60]])
    fresh = tiny_segmenter(seed=0)
    fresh.adopt(sam=tiny_sam(seed=5))
    expected = fresh.segment_prompt(scene.image, points=[[60, 60]])
    assert [r.rle for r in after] == [r.rle for r in expected]
    assert [r.rle for r in after] != [r.rle for r in before]


# -- item 10: systematic failures stop the run; bad images never do ----------------------------------------------

def test_failure_guard_rules():
    from clipsam.failures import FailureGuard, SystematicFailure

    guard = FailureGuard(first=3, in_a_row=5)
    for k in range(50):  # a folder of broken images: image errors never stop a run
        guard.record(False, f"photos/{k}.jpg: not an image Pillow can read", image_error=True)
    guard = FailureGuard(first=3, in_a_row=5)
    guard.record(False, "RuntimeError: CUDA out of memory (photos/a.jpg)")
    guard.record(False, "RuntimeError: CUDA out of memory (photos/b.jpg)")
    with pytest.raises(SystematicFailure, match="first 3 images"):
        guard.record(False, "RuntimeError: CUDA out of memory (photos/c.jpg)")
    guard = FailureGuard(first=3, in_a_row=5)
    guard.record(True)
    for k in range(4):
        guard.record(False, f"WeightsMissingError: vit_b missing ({k}.png)")
    with pytest.raises(SystematicFailure, match="5 images in a row"):
        guard.record(False, "WeightsMissingError: vit_b missing (9.png)")
    guard = FailureGuard(first=3, in_a_row=5)
    for k in range(20):  # different errors, or successes between: not systematic
        guard.record(k % 2 == 0, f"ValueError: odd {k}")


class _Broken:
    """A segmenter whose every call fails the same way (a model that cannot run), after *good* successes."""

    def __init__(self, scene, good: int = 0):
        from clipsam.testing import oracle_segmenter

        self.inner, self.good = oracle_segmenter(scene), good

    def segment_everything(self, image, **kw):
        if self.good > 0:
            self.good -= 1
            return self.inner.segment_everything(image, **kw)
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_label_run_stops_on_a_systematic_failure_and_keeps_what_finished(tmp_path, scene):
    from clipsam.dataset import LabelJob, list_images, run_local
    from clipsam.failures import SystematicFailure

    (tmp_path / "photos").mkdir()
    for k in range(30):
        Image.fromarray(scene.image).save(tmp_path / "photos" / f"{k:02d}.png")
    items = list_images(tmp_path / "photos")
    job = LabelJob(tmp_path / "out", scene.taxonomy, segmenter_spec={"sam": "x", "clip": "y"})
    job.prepare(items=items)
    seen = []
    with pytest.raises(SystematicFailure, match="20 images in a row.*CUDA out of memory"):
        run_local(job, items, segmenter=_Broken(scene, good=2), on_result=seen.append)
    job.close()
    assert len(seen) == 22 and len(list((tmp_path / "out" / "parts").glob("*[0-9].json"))) == 2
    assert len(job.pending(items)) == 28  # a rerun does the rest


def test_index_stops_on_a_systematic_failure_and_keeps_what_finished(tmp_path, scene):
    pytest.importorskip("lancedb")
    from clipsam import Segmenter
    from clipsam.failures import SystematicFailure
    from clipsam.search import RegionIndex
    from clipsam.testing import OracleEmbedder, OracleProposer

    seg = Segmenter.from_models(OracleProposer(scene), OracleEmbedder(scene), text_cache=False)
    paths = []
    for k in range(24):
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(np.roll(scene.image, k, axis=1)).save(paths[-1])
    store = RegionIndex(tmp_path / "db", seg, taxonomy=scene.taxonomy)
    store.add(paths[:1])
    real = seg.segment_everything
    calls = {"n": 0}

    def broken(image, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            return real(image, **kw)
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    seg.segment_everything = broken
    with pytest.raises(SystematicFailure, match="20 images in a row"):
        store.add(paths)
    assert store.image_count() == 2  # the one finished before the failure was written, not lost


# -- item 8: 16-bit PNGs --------------------------------------------------------------------------------------------

def test_png_ids_beyond_16_bits_are_refused_before_any_model_runs(tmp_path):
    """Item 8: a taxonomy with 70,000 labels and --png: category ids above 65,535 overflowed the 16-bit semantic PNG,
    and the OverflowError came outside the per-image guard and ended the batch. Now the job refuses at once."""
    from clipsam.core.taxonomy import Taxonomy
    from clipsam.dataset import LabelJob
    from clipsam.errors import ClipsamError

    labels = [f"t{k}" for k in range(70_000)]
    big = Taxonomy.from_dict({"name": "big", "nodes": [{"name": "thing", "children": labels}]})
    with pytest.raises(ClipsamError, match=r"16-bit PNGs \(ids up to 65,535\).*up to 70,00\d") as err:
        LabelJob(tmp_path / "out", big, pngs=True)
    assert "\n" not in str(err.value)
    LabelJob(tmp_path / "out", big)  # without --png the COCO file holds every category


def test_a_png_that_cannot_be_written_fails_that_image_only(tmp_path, scene, monkeypatch):
    """Item 8: the PNGs were written outside the per-image guard: one image whose PNG could not be written (a full
    disk, a region count past 16 bits) ended the whole run."""
    import clipsam.dataset as D
    from clipsam.testing import oracle_segmenter

    (tmp_path / "src").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(scene.image).save(tmp_path / "src" / name)
    job = D.LabelJob(tmp_path / "out", scene.taxonomy, pngs=True, segmenter_spec={"sam": "x", "clip": "y"})
    record = job.prepare()
    real = D._write_png

    def full_disk_for_a(path, array):
        if path.stem == "a":
            raise OSError(28, "No space left on device")
        real(path, array)

    monkeypatch.setattr(D, "_write_png", full_disk_for_a)
    results = []
    D.run_local(job, D.list_images(tmp_path / "src"), segmenter=oracle_segmenter(scene), on_result=results.append)
    job.finish(record, {})
    assert sorted(r["status"] for r in results) == ["done", "error"]
    assert (tmp_path / "out" / "semantic" / "b.png").is_file()
    assert len(json.loads((tmp_path / "out" / "annotations.json").read_text())["images"]) == 1


# -- item 9: one box convention per consumer -----------------------------------------------------------------------

def test_supervision_boxes_are_supervisions_own(scene):
    """Item 9: ``to_supervision()`` boxes were end-exclusive, 1 px larger than ``sv.mask_to_xyxy`` of the same masks."""
    sv = pytest.importorskip("supervision")
    from clipsam.testing import oracle_segmenter

    det = oracle_segmenter(scene).segment_everything(scene.image).to_supervision()
    assert len(det) >= 3
    assert np.array_equal(det.xyxy, sv.mask_to_xyxy(det.mask).astype(np.float32))


def test_refine_prompts_sam_with_sams_own_box_of_the_mask():
    """Item 9: ``refine`` prompted SAM with the end-exclusive box, one pixel past the mask on the right and bottom;
    SAM's own box of a mask (``batched_mask_to_box``, stock's ``stock_boxes``) is inclusive."""
    import torch
    from segment_anything.utils.amg import batched_mask_to_box

    from clipsam.core.regions import Regions
    from clipsam.models.base import PromptMasks
    from clipsam.stages.parts import refine_masks

    boxes = []

    class Recorder:
        def predict(self, embedding, *, box=None, **kwargs):
            boxes.append(np.asarray(box))
            return PromptMasks(np.zeros((1, 20, 30), bool), np.ones(1, np.float32), np.zeros((1, 8, 8), np.float32))

    m = np.zeros((20, 30), bool)
    m[3:9, 5:17] = True
    regions = Regions.from_rles([M.encode(m)], predicted_iou=np.ones(1), stability_score=np.ones(1))
    refine_masks(Recorder(), None, regions, [0], np.zeros((1, 4)), lambda rles: np.zeros((len(rles), 4)))
    sams = batched_mask_to_box(torch.as_tensor(m)[None]).numpy()[0]
    assert boxes[0].tolist() == sams.tolist() == [5, 3, 16, 8]


# -- items 4 and 11: options checked on every path, before any model runs; none recorded and ignored ---------------

@pytest.mark.parametrize("call", [
    lambda s, im: s.segment(im, "dog", strategy="guided", points_per_side=0),
    lambda s, im: s.segment(im, "dog", strategy="guided", points_per_sid=8),
    lambda s, im: s.segment_everything(im, strategy="guided", taxonomy="everyday", pred_iou_thresh=2.0),
    lambda s, im: s.segment(im, "dog", points_per_side=0),
], ids=["guided-zero", "guided-misspelt", "guided-everything", "grid-zero"])
def test_generator_parameters_are_checked_on_every_path_before_sam_runs(call, scene):
    """Item 4: the guided path ignored generator parameters and never checked them (``points_per_side=0`` was
    accepted), and a misspelt one was caught only on the grid path, after SAM's encoder had run."""
    from clipsam import Segmenter
    from clipsam.errors import ConfigError

    seg = Segmenter("tiny-random", "tiny-random", text_cache=False)
    with pytest.raises(ConfigError):
        call(seg, scene.image)
    assert seg._proposer is None and seg._embedder is None


def test_fast_and_bf16_are_applied_or_refused_never_recorded_and_ignored():
    """Item 11: ``precision="bf16"`` and ``speed="fast"`` were recorded in ``config()`` for SAM 2.1 and SAM 3 and not
    applied. SAM 2.1 runs fp32 in clipsam: ``speed="fast"`` thins its grid and records fp32; bf16 is refused for both,
    and ``speed="fast"`` for SAM 3, which has no grid to thin."""
    from clipsam import Segmenter
    from clipsam.errors import ConfigError

    fast2 = Segmenter("sam2.1_hiera_tiny", speed="fast")
    assert fast2.config()["precision"] == "fp32" and fast2.config()["generator_params"] == {"points_per_side": 16}
    assert Segmenter("vit_b", speed="fast").config()["precision"] == "bf16"  # SAM 1: autocast on CUDA
    for kwargs in ({"sam": "sam2.1_hiera_tiny", "precision": "bf16"}, {"sam": "sam3", "precision": "bf16"},
                   {"sam": "sam3", "speed": "fast"}):
        with pytest.raises(ConfigError) as err:
            Segmenter(**kwargs)
        assert "\n" not in str(err.value)
