"""Region search on LanceDB: oracle semantics, tiny real models, resume after kill -9, errors, the ANN index."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("lancedb")

from clipsam import Segmenter  # noqa: E402
from clipsam.core import masks as M  # noqa: E402
from clipsam.errors import ClipsamError  # noqa: E402
from clipsam.search import RegionIndex, build_ann_index  # noqa: E402
from clipsam.testing import OracleEmbedder, OracleProposer  # noqa: E402

TINY = ["--sam", "tiny-random", "--clip", "tiny-random"]


@pytest.fixture()
def scene_files(tmp_path, scene):
    folder = tmp_path / "scenes"
    folder.mkdir()
    Image.fromarray(scene.image).save(folder / "a.png")
    from clipsam.testing import synthetic_scene

    Image.fromarray(synthetic_scene(240, 400).image).save(folder / "b_large.png")  # same layout, twice the size
    return folder


def _oracle_index(path, scene):
    seg = Segmenter.from_models(OracleProposer(scene), OracleEmbedder(scene), text_cache=False)
    return RegionIndex(path, seg, taxonomy=scene.taxonomy)


def test_text_and_example_search_with_oracle_semantics(tmp_path, scene, scene_files):
    index = _oracle_index(tmp_path / "db", scene)
    counts = index.add(scene_files)
    assert counts == {"added": 2, "skipped": 0, "failed": 0, "regions": 20, "moved": 0}
    assert len(index) == 20 and index.image_count() == 2

    cats = index.search("cat", k=2)
    assert [h.label for h in cats] == ["cat", "cat"] and {h.image_path.split("/")[-1] for h in cats} == {
        "a.png", "b_large.png"}
    cat_shape = scene.shape("cat")
    hit = next(h for h in cats if h.image_path.endswith("a.png"))
    assert M.iou_matrix([hit.rle], [cat_shape.rle])[0, 0] == 1.0 and hit.similarity > 0.8
    assert hit.label_path == ("animal", "cat") and hit.parent_id is not None

    wheels = index.search("wheel", k=4)
    assert [h.label for h in wheels] == ["wheel"] * 4
    vehicles = index.search("cat", k=20, label="vehicle")
    assert {h.label_path[0] for h in vehicles} == {"vehicle"} and len(vehicles) == 6
    big = index.search("wheel", k=20, min_area=1000)
    assert all(h.area >= 1000 for h in big) and "wheel" not in {h.label for h in big}
    parts = index.search("dog", k=20, where="kind = 'part'")
    assert {h.kind for h in parts} == {"part"}

    x, y, w, h = M.bbox_xywh(cat_shape.rle)
    like = index.search(scene_files / "a.png", box=[x, y, x + w, y + h], k=1)
    assert like[0].label == "cat"

    again = index.add(scene_files)
    assert again["added"] == 0 and again["skipped"] == 2 and len(index) == 20


def test_errors(tmp_path, scene, scene_files):
    with pytest.raises(ClipsamError, match="no region index"):
        RegionIndex(tmp_path / "missing").search("cat")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipsamError, match="is empty"):
        RegionIndex(tmp_path / "empty", Segmenter(sam="tiny-random", clip="tiny-random")).search("cat")
    index = _oracle_index(tmp_path / "db", scene)
    index.add([scene_files / "a.png"])
    other = RegionIndex(tmp_path / "db", Segmenter(sam="tiny-random", clip="tiny-random"))
    with pytest.raises(ClipsamError, match="built with CLIP 'oracle-embedder'"):
        other.search("cat")
    with pytest.raises(ClipsamError, match="k must be"):
        index.search("cat", k=0)
    with pytest.raises(ClipsamError, match="does not fit"):
        index.search(scene_files / "a.png", box=[0, 0, 5000, 10])


def _cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "clipsam.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, chelsea):
    folder = tmp_path_factory.mktemp("idx_photos")
    for k in range(8):
        Image.fromarray(chelsea[k * 20: k * 20 + 120, k * 30: k * 30 + 180]).save(folder / f"p{k}.png")
    (folder / "broken.jpg").write_text("not an image")
    return folder


@pytest.mark.slow
def test_cli_index_and_search_with_tiny_models(tmp_path, photo_folder):
    db = tmp_path / "db"
    first = json.loads(_cli("index", photo_folder, "--db", db, *TINY, "--json").stdout)
    assert first["added"] == 8 and first["failed"] == 1 and "broken.jpg" in first["errors"][0]["path"]
    again = json.loads(_cli("index", photo_folder, "--db", db, *TINY, "--json").stdout)
    assert again["added"] == 0 and again["skipped"] == 8 and again["total_regions"] == first["total_regions"]
    hits = json.loads(_cli("search", "a cat", "--db", db, "-k", "3", "--json").stdout)
    assert len(hits) == 3 and all(-1.0 <= h["similarity"] <= 1.0 for h in hits)
    sims = [h["similarity"] for h in hits]
    assert sims == sorted(sims, reverse=True)
    from clipsam.core import masks as M

    for h in hits:  # each hit's mask, as COCO RLE (it was null)
        assert M.area(h["rle"]) == h["area"] and M.bbox_xywh(h["rle"]) == pytest.approx(h["bbox_xywh"])
    crops = tmp_path / "crops"
    like = _cli("search", "--like", photo_folder / "p0.png", "--box", "0,0,100,100", "--db", db, "-k", "2",
                "--save-crops", crops)
    assert "2 regions" in like.stdout and len(list(crops.glob("*_crop.png"))) == 2
    wrong = _cli("search", "cat", "--db", db, "--clip", "ViT-B-32/openai", check=False)
    assert wrong.returncode == 2 and "built with CLIP 'tiny-random'" in " ".join(wrong.stderr.split())
    missing = _cli("search", "cat", "--db", tmp_path / "nothing", check=False)
    assert missing.returncode == 2 and "no region index" in missing.stderr


@pytest.mark.slow
def test_killed_index_run_resumes_without_duplicates(tmp_path, chelsea):
    import lancedb

    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(20):
        Image.fromarray(chelsea[k * 8: k * 8 + 110, k * 12: k * 12 + 170]).save(photos / f"q{k:02d}.png")
    ref = json.loads(_cli("index", photos, "--db", tmp_path / "ref", *TINY, "--json").stdout)
    db = tmp_path / "db"
    proc = subprocess.Popen([sys.executable, "-m", "clipsam.cli", "index", str(photos), "--db", str(db), *TINY,
                             "--batch", "2", "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_at_kill = 0
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            done_at_kill = lancedb.connect(str(db)).open_table("images").count_rows()
        except Exception:  # not created yet
            done_at_kill = 0
        if done_at_kill >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= done_at_kill < 20, "the run finished before it could be killed"
    resumed = json.loads(_cli("index", photos, "--db", db, *TINY, "--json").stdout)
    assert resumed["skipped"] >= done_at_kill and resumed["skipped"] + resumed["added"] == 20
    assert resumed["total_regions"] == ref["total_regions"] and resumed["total_images"] == 20
    rows = lancedb.connect(str(db)).open_table("regions").to_arrow().select(["image_hash", "region_id"]).to_pylist()
    keys = [(r["image_hash"], r["region_id"]) for r in rows]
    assert len(keys) == len(set(keys)) == ref["total_regions"]


def test_ann_index_finds_the_exact_neighbours(tmp_path):
    import lancedb
    import pyarrow as pa

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 32)).astype(np.float32)
    data = centres[rng.integers(0, 20, 3000)] + 0.3 * rng.standard_normal((3000, 32)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    table = lancedb.connect(str(tmp_path)).create_table(
        "t", pa.table({"id": np.arange(3000), "vector": pa.FixedSizeListArray.from_arrays(pa.array(data.ravel()), 32)}))
    build_ann_index(table, 3000, 32)
    assert table.list_indices()
    from clipsam.search import ANN_SEARCH

    recall = []
    for q in data[:20]:
        exact = set(np.argsort(-(data @ q))[:10].tolist())
        got = table.search(q).distance_type("cosine").nprobes(ANN_SEARCH["nprobes"]).refine_factor(
            ANN_SEARCH["refine_factor"]).limit(10).to_list()
        recall.append(len(exact & {r["id"] for r in got}) / 10)
    assert np.mean(recall) >= 0.9


def test_compactions_thin_out_as_a_run_grows():
    """A compaction rewrites the growing table: at a fixed interval a long run rewrites it over and over (quadratic);
    doubling the interval up to a cap keeps the rows rewritten within a few times the rows written."""
    from clipsam.search import COMPACT_MAX_EVERY, compaction_due

    due = [n for n in range(1, 2001) if compaction_due(n)]
    assert due[:6] == [16, 32, 64, 128, 256, 512] and max(np.diff(due)) <= COMPACT_MAX_EVERY
    rewritten = sum(due)  # appends' worth of rows each compaction may rewrite
    assert rewritten < 6 * 2000 and len(due) < 2000 / 16 / 5  # the fixed 16 would rewrite ~62x the table


def test_index_writes_in_batches_and_compacts(tmp_path, scene, monkeypatch):
    import lancedb

    from clipsam import search as S

    monkeypatch.setattr(S, "KEEP_VERSIONS_SECONDS", 0.0)  # a run keeps a minute of versions for live readers

    folder = tmp_path / "many"
    folder.mkdir()
    base = scene.image
    for k in range(7):  # seven different files (distinct hashes), same layout
        img = base.copy()
        img[0, 0] = (k, k, k)
        Image.fromarray(img).save(folder / f"s{k}.png")
    seg = Segmenter.from_models(OracleProposer(scene), OracleEmbedder(scene), text_cache=False)
    index = RegionIndex(tmp_path / "db", seg, taxonomy=scene.taxonomy, flush_images=3)
    seen = []
    counts = index.add(folder, on_result=lambda r: seen.append(r["status"]))
    assert counts["added"] == 7 and seen == ["added"] * 7 and len(index) == 70 and index.image_count() == 7
    db = lancedb.connect(str(tmp_path / "db"))
    for name in ("regions", "images"):
        table = db.open_table(name)
        assert len(table.list_versions()) == 1  # compacted, old versions removed: not two versions per image
        files = list((tmp_path / "db" / f"{name}.lance" / "data").glob("*.lance"))
        assert len(files) == 1, files  # one data file, not one per image
    again = index.add(folder)
    assert again["skipped"] == 7 and len(index) == 70
    with pytest.raises(ClipsamError, match="flush_images"):
        RegionIndex(tmp_path / "x", seg, flush_images=0)


def test_the_database_speaks_cocos_dialect_and_old_ones_are_migrated(tmp_path, scene, scene_files):
    """Issue 27, item 5: label paths were stored as ``/animal/dog/`` (unknown ``/``) and "no parent" as ``-1``, so
    ``where="label_path LIKE 'animal%'"`` found nothing. Now COCO's convention; an old database is migrated."""
    import lancedb

    index = _oracle_index(tmp_path / "db", scene)
    index.add(scene_files)
    rows = lancedb.connect(str(tmp_path / "db")).open_table("regions").to_arrow().to_pylist()
    assert rows and all(not r["label_path"].startswith("/") and not r["label_path"].endswith("/") for r in rows)
    assert any(r["parent_id"] is None for r in rows) and all(r["parent_id"] is None or r["parent_id"] >= 0
                                                             for r in rows)
    animals = index.search("a photo", k=50, where="label_path LIKE 'animal%'")
    assert animals and all(h.label_path[0] == "animal" for h in animals)
    assert {h.region_id for h in index.search("a photo", k=50, label="animal")} == {h.region_id for h in animals}
    # a database in the old dialect: rewritten the way clipsam wrote it before, then searched and added to
    table = lancedb.connect(str(tmp_path / "db")).open_table("regions")
    table.update(values_sql={"label_path": "concat('/', label_path, '/')"})
    table.update(where="parent_id IS NULL", values_sql={"parent_id": "-1"})
    meta = {k: v for k, v in index.meta().items() if k != "format"}
    index._write_meta(meta)
    again = RegionIndex(tmp_path / "db", index.segmenter, taxonomy=scene.taxonomy)
    assert {h.region_id for h in again.search("a photo", k=50, where="label_path LIKE 'animal%'")} == {
        h.region_id for h in animals}
    migrated = lancedb.connect(str(tmp_path / "db")).open_table("regions").to_arrow().to_pylist()
    assert sorted(map(str, migrated)) == sorted(map(str, rows)) and again.meta()["format"] == 2
