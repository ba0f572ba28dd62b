"""clipsam label: COCO output, bad images, filters, resume after kill -9, worker pools and the Ray engine."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from clipsam.dataset import Filters, LabelJob, list_images, output_stems, run_local, stable_image_id
from clipsam.errors import ClipsamError
from clipsam.testing import oracle_segmenter

TINY = ["--sam", "tiny-random", "--clip", "tiny-random"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory, chelsea):
    """Twelve real photo crops of assorted sizes."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "nested").mkdir()
    rng = np.random.default_rng(0)
    for k in range(12):
        h, w = int(rng.integers(60, 140)), int(rng.integers(80, 200))
        y, x = int(rng.integers(0, 300 - h)), int(rng.integers(0, 451 - w))
        sub = folder / "nested" if k % 3 == 0 else folder
        Image.fromarray(chelsea[y:y + h, x:x + w]).save(sub / f"img_{k:02d}.jpg" if k % 2 else sub / f"img_{k:02d}.png")
    (folder / "notes.txt").write_text("not an image, not listed")
    return folder


def _label(src, out, *extra, check=True):
    cmd = [sys.executable, "-m", "clipsam.cli", "label", str(src), "--taxonomy", "coco", "--out", str(out), *TINY,
           "--json", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_mixed_folder_finishes_and_is_valid_coco(tmp_path, photos, chelsea):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    src = tmp_path / "mixed"
    src.mkdir()
    for name in ("img_01.jpg", "img_02.png"):
        (src / name).write_bytes((photos / name).read_bytes())
    good = (photos / "img_05.jpg").read_bytes()
    (src / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (src / "zero.png").write_bytes(b"")
    (src / "text.jpg").write_text("hello")
    Image.new("L", (14000, 14000)).save(src / "huge.png")  # 196 MP: over the 179 MP limit
    proc = _label(src, tmp_path / "out", "--unknown", "--png", "--format", "coco,yolo")
    summary = json.loads(proc.stdout)
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    reasons = {os.path.basename(e["path"]): e["reason"] for e in errors}
    assert set(reasons) == {"truncated.jpg", "zero.png", "text.jpg", "huge.png"}
    assert "empty" in reasons["zero.png"] and "exceeds" in reasons["huge.png"]
    assert summary["images"] == 2 and summary["errors"] == 4
    coco = COCO(str(tmp_path / "out" / "annotations.json"))
    assert len(coco.getImgIds()) == 2 and coco.getAnnIds()
    data = json.loads((tmp_path / "out" / "annotations.json").read_text())
    results = coco.loadRes(data["annotations"])
    ev = COCOeval(coco, results, "segm")
    ev.evaluate()
    ev.accumulate()
    for img in data["images"]:
        assert img["id"] == stable_image_id(img["file_name"])
        stem = img["file_name"].rsplit(".", 1)[0]  # named like the image: img_01.jpg -> semantic/img_01.png
        assert (tmp_path / "out" / "semantic" / f"{stem}.png").is_file()
        assert (tmp_path / "out" / "instances" / f"{stem}.png").is_file()
        n = sum(a["image_id"] == img["id"] for a in data["annotations"])
        assert len((tmp_path / "out" / "labels" / f"{stem}.txt").read_text().splitlines()) == n
    assert not (tmp_path / "out" / "labels" / "truncated.txt").exists() and (tmp_path / "out" / "data.yaml").is_file()
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["models"] == {"sam": "tiny-random", "clip": "tiny-random"} and run["finished"]
    assert run["counts"]["errors"] == 4 and "parameters" in run


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [2, 7])
def test_kill_9_and_resume_gives_identical_annotations(tmp_path, photos, kill_after):
    _label(photos, tmp_path / "ref", "--unknown")
    reference = (tmp_path / "ref" / "annotations.json").read_bytes()
    ref = json.loads(reference)
    assert len(ref["images"]) == 12 and len(ref["annotations"]) >= 12  # a comparison of real annotations
    assert {a["image_id"] for a in ref["annotations"]} == {im["id"] for im in ref["images"]}

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "clipsam.cli", "label", str(photos), "--taxonomy", "coco", "--out", str(out), *TINY,
           "--json", "--unknown"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        done = list((out / "parts").glob("*.json")) if (out / "parts").is_dir() else []
        if len(done) >= kill_after:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(list((out / "parts").glob("*.json")))
    assert kill_after <= finished < 12 and not (out / "annotations.json").exists()

    resumed = json.loads(_label(photos, out, "--unknown").stdout)
    assert resumed["resumed"] == finished and resumed["processed"] == 12 - finished
    assert (out / "annotations.json").read_bytes() == reference
    again = json.loads(_label(photos, out, "--unknown").stdout)
    assert again["processed"] == 0 and (out / "annotations.json").read_bytes() == reference


@pytest.mark.slow
def test_changed_parameters_are_refused_unless_forced(tmp_path, photos):
    src = tmp_path / "two"
    src.mkdir()
    for name in ("img_01.jpg", "img_02.png"):
        (src / name).write_bytes((photos / name).read_bytes())
    _label(src, tmp_path / "out")
    proc = _label(src, tmp_path / "out", "--min-area", "50", check=False)
    assert proc.returncode == 2 and "different parameters (filters.min_area)" in " ".join(proc.stderr.split())
    forced = json.loads(_label(src, tmp_path / "out", "--min-area", "50", "--force").stdout)
    assert forced["resumed"] == 0 and forced["processed"] == 2


def test_oracle_labels_filters_and_parents(tmp_path, scene):
    Image.fromarray(scene.image).save(tmp_path / "scene.png")
    seg = oracle_segmenter(scene)
    items = list_images(tmp_path)
    assert [i.file_name for i in items] == ["scene.png"]

    def run(filters, out):
        job = LabelJob(tmp_path / out, scene.taxonomy, filters=filters, segmenter_spec={"sam": "x", "clip": "y"})
        record = job.prepare()
        run_local(job, items, segmenter=seg)
        job.finish(record, {})
        return json.loads((tmp_path / out / "annotations.json").read_text())

    coco = run(Filters(include_unknown=True), "all")
    cats = {c["id"]: c for c in coco["categories"]}
    paths = sorted(a["label_path"] or a["kind"] for a in coco["annotations"])
    assert paths == sorted(["furniture/sofa", "animal/cat", "vehicle/car", "vehicle/car/wheel", "vehicle/car/wheel",
                            "animal/dog", "animal/dog/head", "animal/dog/head/ear", "unknown", "animal/dog/puppy"])
    by_id = {a["id"]: a for a in coco["annotations"]}
    ear = next(a for a in coco["annotations"] if a["label_path"].endswith("/ear"))
    assert by_id[ear["parent_id"]]["label_path"] == "animal/dog/head"
    assert cats[ear["category_id"]]["label_path"] == "animal/dog/head/ear" and cats[ear["category_id"]]["is_part"]
    head = cats[by_id[ear["parent_id"]]["category_id"]]
    assert head["supercategory"] == "dog" and cats[ear["category_id"]]["supercategory"] == "dog/head"  # parent

    animals = run(Filters(labels=("animal",), min_area=100), "animals")  # the ear (52 px) goes, parts re-parent
    kept = {a["label_path"] for a in animals["annotations"]}
    assert kept == {"animal/cat", "animal/dog", "animal/dog/head", "animal/dog/puppy"}
    top2 = run(Filters(max_regions=2), "top2")
    assert len(top2["annotations"]) == 2 and all(a["parent_id"] is None for a in top2["annotations"])


def test_sources_text_file_and_coco_json(tmp_path, photos):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two photos\n{photos / 'img_01.jpg'}\n\n{photos / 'img_02.png'}\n")
    assert len(list_images(listing)) == 2
    coco = tmp_path / "images.json"
    images = [{"id": 5, "file_name": "img_01.jpg"}, {"id": 3, "file_name": "img_02.png"}]
    coco.write_text(json.dumps({"images": images}))
    items = list_images(coco, image_root=photos)
    assert [i.image_id for i in items] == [3, 5] and os.path.isfile(items[0].path)
    with pytest.raises(ClipsamError, match="no such folder or file"):
        list_images(tmp_path / "missing")
    folder_items = list_images(photos)
    assert len(folder_items) == 12 and any(i.file_name.startswith("nested/") for i in folder_items)


@pytest.mark.slow
def test_worker_pool_matches_single_process(tmp_path, photos):
    single = _label(photos, tmp_path / "one", "--unknown")
    pool = _label(photos, tmp_path / "two", "--workers", "2", "--unknown")
    assert json.loads(pool.stdout)["processed"] == json.loads(single.stdout)["processed"] == 12
    assert json.loads(single.stdout)["annotations"] >= 12  # every image has annotations to compare
    assert (tmp_path / "one" / "annotations.json").read_bytes() == (tmp_path / "two" / "annotations.json").read_bytes()


@pytest.mark.slow
def test_ray_engine_matches_local(tmp_path, photos):
    pytest.importorskip("ray")
    src = tmp_path / "four"
    src.mkdir()
    for name in ("img_01.jpg", "img_02.png", "img_04.png", "img_05.jpg"):
        (src / name).write_bytes((photos / name).read_bytes())
    (src / "bad.jpg").write_text("x")
    local_proc = _label(src, tmp_path / "local", "--unknown")
    env_proc = _label(src, tmp_path / "ray", "--engine", "ray", "--workers", "2", "--unknown")
    assert json.loads(env_proc.stdout)["errors"] == 1
    assert json.loads(local_proc.stdout)["annotations"] >= 4  # every image has annotations to compare
    local, ray_out = tmp_path / "local", tmp_path / "ray"
    assert (local / "annotations.json").read_bytes() == (ray_out / "annotations.json").read_bytes()
    assert (tmp_path / "local" / "errors.jsonl").read_text() == (tmp_path / "ray" / "errors.jsonl").read_text()


def test_output_stems_follow_image_names_and_never_collide_or_escape():
    names = ["kitchen/cat.jpg", "cat.jpg", "cat.png", "a.b.c.jpeg", "../up/x.jpg", "/abs/y.png", "noext", "x.jpg",
             "caf\udce9.jpg"]
    stems = output_stems(names, list(range(100, 100 + len(names))))
    assert stems == ["kitchen/cat", "cat.jpg", "cat.png", "a.b.c", "up/x", "abs/y", "noext", "x", "caf\udce9"]
    assert output_stems(["a.jpg", "a.jpg.png", "a.png"], [7, 8, 9]) == ["a.jpg-7", "a.jpg-8", "a.png"]  # ids last


@given(st.lists(st.text(alphabet="ab./", min_size=1, max_size=6), min_size=1, max_size=8))
def test_output_stems_are_unique_and_stay_inside(names):
    stems = output_stems(names, list(range(len(names))))
    assert len(set(stems)) == len(stems)
    for s in stems:
        assert s and not s.startswith("/") and ".." not in s.split("/") and "" not in s.split("/")


def test_pngs_are_named_like_the_images_and_hold_the_regions(tmp_path):
    from clipsam.export import paint
    from clipsam.testing import synthetic_scene

    scene = synthetic_scene()
    src = tmp_path / "src"
    (src / "kitchen").mkdir(parents=True)
    names = ["kitchen/scene.jpg", "scene.jpg", "scene.png", os.fsdecode(b"caf\xe9.png")]
    for name in names:
        Image.fromarray(scene.image).save(src / name, format="PNG")  # lossless whatever the ending
    items = list_images(src)
    job = LabelJob(tmp_path / "out", scene.taxonomy, filters=Filters(include_unknown=True),
                   segmenter_spec={"sam": "x", "clip": "y"}, pngs=True)
    record = job.prepare()
    run_local(job, items, segmenter=oracle_segmenter(scene))
    job.finish(record, {})
    data = json.loads((tmp_path / "out" / "annotations.json").read_text())
    cats = {c["label_path"]: c["id"] for c in data["categories"]}
    expected = {"kitchen/scene", "scene.jpg", "scene.png", os.fsdecode(b"caf\xe9")}
    found = {p.relative_to(tmp_path / "out" / "semantic").as_posix()[:-4]
             for p in (tmp_path / "out" / "semantic").rglob("*.png")}
    assert found == expected
    anns = [a for a in data["annotations"] if a["image_id"] == data["images"][0]["id"]]
    stem = next(i.output_stem for i in items if i.image_id == data["images"][0]["id"])
    semantic = np.asarray(Image.open(tmp_path / "out" / "semantic" / f"{stem}.png"))
    want = paint([a["segmentation"] for a in anns], [cats[a["label_path"] or a["kind"]] for a in anns],
                 tuple(semantic.shape))
    assert semantic.max() > 0 and np.array_equal(semantic, want)
    instances = np.asarray(Image.open(tmp_path / "out" / "instances" / f"{stem}.png"))
    assert set(np.unique(instances)) <= set(range(len(anns) + 1)) and instances.max() == len(anns)


def test_resume_parameters_name_the_runtime_only_where_it_changes_labels(tmp_path):
    """Exact: every runtime gives the same labels (save float rounding), so a job may resume on another. Fast: ONNX
    Runtime runs CLIP's image tower in int8, so a fast job resumed on another runtime would mix two models."""
    def params(runtime, speed):
        spec = {"sam": "tiny-random", "clip": "tiny-random", "device": "cpu", "runtime": runtime, "speed": speed}
        return LabelJob(tmp_path / f"{runtime}-{speed}", "everyday", segmenter_spec=spec).parameters()

    assert params("torch", "exact") == params("onnx", "exact") == params("auto", "exact")
    assert params("torch", "fast") != params("onnx", "fast")
    assert params("onnx", "fast")["segmenter"]["runtime"] == "onnx"
