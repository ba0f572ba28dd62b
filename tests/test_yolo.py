"""YOLO-seg export: polygons that redraw the masks, and a label output Ultralytics' own dataset code loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

from clipsam.core import masks as M
from clipsam.dataset import LabelJob, list_images, run_local
from clipsam.testing import oracle_label_run, oracle_segmenter, synthetic_scene
from clipsam.yolo import mask_polygon, yolo_lines


def _draw(poly: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Rasterise an ``x, y`` polygon the way COCO does (pycocotools; pixel-edge coordinates)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.frPyObjects([np.asarray(poly, dtype=np.float64).ravel().tolist()], size[0], size[1])
    return mask_utils.decode(rle)[..., 0].astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_rectangle_polygon_lies_on_the_pixel_edges():
    m = np.zeros((40, 60), bool)
    m[5:25, 10:50] = True  # columns 10..49, rows 5..24
    poly = mask_polygon(M.encode(m), tolerance=0.0)
    assert poly[:, 0].min() == pytest.approx(10.0, abs=0.5) and poly[:, 0].max() == pytest.approx(50.0, abs=0.5)
    assert poly[:, 1].min() == pytest.approx(5.0, abs=0.5) and poly[:, 1].max() == pytest.approx(25.0, abs=0.5)
    assert _iou(_draw(poly, m.shape), m) > 0.95


def test_pieces_are_bridged_into_one_polygon_and_holes_filled():
    m = np.zeros((80, 120), bool)
    m[10:40, 10:40] = True
    m[50:75, 80:115] = True  # a second piece
    m[20:30, 20:30] = False  # a hole
    poly = mask_polygon(M.encode(m))
    drawn = _draw(poly, m.shape)
    filled = m.copy()
    filled[20:30, 20:30] = True
    assert _iou(drawn, filled) > 0.9  # both pieces, hole filled, bridge adds only a thin line
    assert drawn[60, 95] and drawn[25, 15] and drawn[25, 25]
    one_pixel = np.zeros((5, 5), bool)
    one_pixel[2, 3] = True
    assert len(mask_polygon(M.encode(one_pixel))) >= 3 and len(mask_polygon(M.encode(np.zeros((5, 5), bool)))) == 0
    strip = np.ones((1, 3000), bool)  # a 1-pixel-high strip image, all mask
    poly = mask_polygon(M.encode(strip))
    assert _iou(_draw(poly, strip.shape), strip) > 0.99
    (line,) = yolo_lines([{"category_id": 1, "segmentation": M.encode(strip)}], strip.shape)
    xs = [float(v) for v in line.split()[1::2]]
    assert min(xs) == 0.0 and max(xs) == 1.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 70), st.integers(3, 30), st.integers(3, 30)),
                min_size=1, max_size=4))
def test_polygons_redraw_their_masks(rects):
    m = np.zeros((64, 96), bool)
    for y, x, h, w in rects:
        m[y: y + h, x: x + w] = True
    filled = ndimage.binary_fill_holes(m)
    poly = mask_polygon(M.encode(m))
    assert np.all(poly >= 0) and np.all(poly[:, 0] <= 96) and np.all(poly[:, 1] <= 64)
    (line,) = yolo_lines([{"category_id": 3, "segmentation": M.encode(m)}], m.shape)
    values = line.split()
    assert values[0] == "2" and len(values) % 2 == 1 and all(0.0 <= float(v) <= 1.0 for v in values[1:])
    assert _iou(_draw(poly, m.shape), filled) > 0.8


@pytest.fixture(scope="module")
def yolo_run(tmp_path_factory):
    """The oracle scene (objects and parts) labelled with ``formats=("yolo",)``, under nested image names."""
    root = tmp_path_factory.mktemp("yolo")
    scene = synthetic_scene()
    src = root / "photos"
    (src / "kitchen").mkdir(parents=True)
    Image.fromarray(scene.image).save(src / "kitchen" / "scene.png")
    Image.fromarray(scene.image[:, ::-1].copy()).save(src / "mirror.jpg", quality=98)
    coco = oracle_label_run(src, root / "out", scene, formats=("yolo",))
    return root / "out", coco, json.loads((root / "out" / "run.json").read_text())


def test_yolo_files_match_the_coco_output(yolo_run):
    out, coco, record = yolo_run
    assert (out / "labels" / "kitchen" / "scene.txt").is_file() and (out / "labels" / "mirror.txt").is_file()
    assert os.path.realpath(out / "images" / "kitchen" / "scene.png").endswith("photos/kitchen/scene.png")
    import yaml

    data = yaml.safe_load((out / "data.yaml").read_text())
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    assert data["names"] == {c["id"] - 1: c["name"] for c in cats} and data["nc"] == len(cats)
    lines = (out / "labels" / "kitchen" / "scene.txt").read_text().splitlines()
    image = next(im for im in coco["images"] if im["file_name"] == "kitchen/scene.png")
    anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
    assert [int(ln.split()[0]) for ln in lines] == [a["category_id"] - 1 for a in anns]
    assert record["counts"]["yolo_polygons"] == sum(1 for a in coco["annotations"] if a["category_id"] > 0)


def _ultralytics(script: str, data_yaml: Path, tmp_path: Path) -> dict:
    """Run *script* on *data_yaml* in a fresh interpreter (Ultralytics patches PIL globally), offline, its fonts
    stubbed (its checker would download them); the JSON it prints last."""
    config = tmp_path / "ultralytics-config"
    config.mkdir(exist_ok=True)
    for font in ("Arial.ttf", "Arial.Unicode.ttf"):
        (config / font).write_bytes(b"")
    env = dict(os.environ, YOLO_CONFIG_DIR=str(config), YOLO_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", script, str(data_yaml)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


_ULTRALYTICS = textwrap.dedent("""
    import json, sys
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset
    data = check_det_dataset(sys.argv[1])
    ds = YOLODataset(img_path=data["train"], data=data, task="segment", imgsz=256, augment=False)
    labels = [{"im_file": lb["im_file"], "cls": lb["cls"].ravel().astype(int).tolist(),
               "segments": [s.tolist() for s in lb["segments"]], "shape": list(lb["shape"])} for lb in ds.labels]
    item = ds[0]
    print(json.dumps({"nc": data["nc"], "names": data["names"], "labels": labels,
                      "masks": list(item["masks"].shape), "n_instances": int(item["cls"].shape[0])}))
""")


def test_ultralytics_loads_the_yolo_dataset(yolo_run, tmp_path):
    import importlib.util

    if importlib.util.find_spec("ultralytics") is None:  # not imported here: it patches PIL.Image.open globally
        pytest.skip("needs ultralytics (in the dev extra)")
    out, coco, _ = yolo_run
    got = _ultralytics(_ULTRALYTICS, out / "data.yaml", tmp_path)
    assert got["nc"] == len(coco["categories"])
    assert {int(k): v for k, v in got["names"].items()} == {c["id"] - 1: c["name"] for c in coco["categories"]}
    images = {im["file_name"]: im for im in coco["images"]}
    assert len(got["labels"]) == len(images) == 2
    for lb in got["labels"]:
        name = os.path.relpath(lb["im_file"], out / "images")
        im = images[name]
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"] and a["category_id"] > 0]
        assert lb["cls"] == [a["category_id"] - 1 for a in anns], name  # none dropped as duplicate or invalid
        assert lb["shape"] == [im["height"], im["width"]]
        h, w = im["height"], im["width"]
        for seg, ann in zip(lb["segments"], anns, strict=True):
            drawn = _draw(np.asarray(seg) * [w, h], (h, w))
            filled = ndimage.binary_fill_holes(M.decode(ann["segmentation"]))
            assert _iou(drawn, filled) > (0.9 if ann["area"] >= 200 else 0.5), ann["label_path"]
    assert got["n_instances"] > 0 and got["masks"][0] >= 1


def test_yolo_added_to_a_finished_run_without_labelling_again(tmp_path):
    scene = synthetic_scene()
    src = tmp_path / "photos"
    src.mkdir()
    Image.fromarray(scene.image).save(src / "scene.png")
    items = list_images(src)

    def run(formats, segmenter):
        job = LabelJob(tmp_path / "out", scene.taxonomy, segmenter_spec={"sam": "x", "clip": "y"}, formats=formats)
        record = job.prepare()
        run_local(job, job.pending(items), segmenter=segmenter)
        return job.finish(record, {})

    run((), oracle_segmenter(scene))
    assert not (tmp_path / "out" / "data.yaml").exists()

    class Refuses:
        def segment_everything(self, *a, **k):
            raise AssertionError("labelled again")

    record = run(("yolo",), Refuses())
    lines = (tmp_path / "out" / "labels" / "scene.txt").read_text().splitlines()
    assert record["counts"]["yolo_polygons"] == len(lines) > 0


_TRAINER_MASKS = textwrap.dedent("""
    import json, sys
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    data = check_det_dataset(sys.argv[1])
    out = {}
    for overlap in (True, False):  # the trainer's default, and what clipsam's datasets need
        cfg = get_cfg(overrides={"task": "segment", "imgsz": 256, "overlap_mask": overlap, "fraction": 1.0})
        ds = build_yolo_dataset(cfg, data["train"], 1, data, mode="val")
        areas = []
        for k in range(len(ds)):
            item = ds[k]
            masks, n = item["masks"], int(item["cls"].shape[0])
            if overlap:  # one index map: instance i is where the map holds i + 1
                areas.append([int((masks[0] == i + 1).sum()) for i in range(n)])
            else:
                areas.append([int(m.sum()) for m in masks])
        out[str(overlap)] = {"areas": areas, "files": [lb["im_file"] for lb in ds.labels]}
    print(json.dumps(out))
""")


def test_ultralytics_training_keeps_parts_and_wholes_whole(yolo_run, tmp_path):
    """Issue 27, item 1: Ultralytics' default ``overlap_mask=True`` paints an image's masks into one index map, so a
    whole loses the pixels of every part on it. Loaded as ``yolo segment train`` builds its dataset, with
    ``overlap_mask=False`` (the command clipsam prints and documents) every whole keeps its area."""
    import importlib.util

    if importlib.util.find_spec("ultralytics") is None:
        pytest.skip("needs ultralytics (in the dev extra)")
    out, coco, _ = yolo_run
    got = _ultralytics(_TRAINER_MASKS, out / "data.yaml", tmp_path)
    cut, kept, wholes = 0, 0, 0
    for k, f in enumerate(got["False"]["files"]):
        im = next(i for i in coco["images"] if f.endswith(i["file_name"]))
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"] and a["category_id"] > 0]
        ids = {a["id"] for a in anns}
        separate, painted = got["False"]["areas"][k], got["True"]["areas"][got["True"]["files"].index(f)]
        assert len(separate) == len(anns) == len(painted)
        scale = (256 / max(im["height"], im["width"]) / 4) ** 2  # letterboxed to 256, masks at a quarter
        for a, sep, paint in zip(anns, separate, painted, strict=True):
            if a["area"] < 400:
                continue
            assert sep == pytest.approx(a["area"] * scale, rel=0.2), a["label_path"]  # the whole mask
            if any(b.get("parent_id") == a["id"] for b in anns if b["id"] in ids):
                wholes += 1
                cut += paint < 0.95 * sep
                kept += sep >= 0.8 * a["area"] * scale
    assert wholes >= 2 and cut >= 1 and kept == wholes  # the default cuts parts out; overlap_mask=False does not


def test_clipsam_label_prints_the_training_command_that_keeps_parts_whole(tmp_path):
    from typer.testing import CliRunner

    from clipsam.cli import app

    (tmp_path / "photos").mkdir()
    Image.fromarray(synthetic_scene().image).save(tmp_path / "photos" / "a.png")
    res = CliRunner().invoke(app, ["label", str(tmp_path / "photos"), "--out", str(tmp_path / "out"), "--format",
                                   "yolo", "--taxonomy", "everyday", "--sam", "tiny-random", "--clip", "tiny-random",
                                   "--points-per-side", "4"], env={"COLUMNS": "60"})
    assert res.exit_code == 0, res.output
    assert "gt.loadRes(json.load(open(...))['annotations'])" in res.output  # the file is not a results list
    line = next(ln for ln in res.output.splitlines() if "yolo segment train" in ln)  # one line to copy, never wrapped
    assert f"data={tmp_path / 'out' / 'data.yaml'} " in line and line.endswith("overlap_mask=False  (keeps each part "
                                                                               "and its whole whole)")
