"""Batch jobs under real conditions: two runs at once, killed parents, full disks, hostile names and sources."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsam.dataset import Filters, LabelJob, list_images, run_local
from clipsam.errors import ClipsamError, LockError
from clipsam.testing import oracle_segmenter

TINY = ["--sam", "tiny-random", "--clip", "tiny-random"]


def _cli(*args: object, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "clipsam.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def photos(tmp_path_factory, chelsea):
    folder = tmp_path_factory.mktemp("run_photos")
    for k in range(12):
        Image.fromarray(chelsea[k * 10: k * 10 + 120, k * 15: k * 15 + 180]).save(folder / f"p{k:02d}.png")
    return folder


@pytest.fixture()
def scene_folder(tmp_path, scene):
    folder = tmp_path / "scenes"
    folder.mkdir()
    for k in range(6):
        Image.fromarray(np.roll(scene.image, k, axis=1)).save(folder / f"s{k}.png")
    return folder


def _wait_for(predicate, timeout: float = 120.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


# -- locks ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_label_run_on_the_same_output_is_refused(tmp_path, photos):
    out = tmp_path / "out"
    args = ["label", str(photos), "-t", "coco", "--out", str(out), *TINY, "--json", "--unknown",
            "--points-per-side", "32"]  # a dense grid: the first run is still busy when the others start
    first = subprocess.Popen([sys.executable, "-m", "clipsam.cli", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: (out / "run.json").is_file() or first.poll() is not None)
        second = _cli(*args, check=False)
        forced = _cli(*args, "--force", check=False)
        busy = first.poll() is None
        stdout, stderr = first.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            first.kill()
    assert busy, "the first run ended before the others were refused"
    for proc in (second, forced):
        text = " ".join(proc.stderr.split())
        assert proc.returncode == 2, text
        assert f"in use by another clipsam run (pid {first.pid}" in text and "Traceback" not in text
    assert first.returncode == 0, stderr[-2000:]
    summary = json.loads(stdout)
    assert summary["processed"] == 12 and summary["images"] == 12 and summary["errors"] == 0
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["images"]) == 12 and len(coco["annotations"]) == summary["annotations"] >= 12
    again = json.loads(_cli(*args).stdout)
    assert again["processed"] == 0 and again["resumed"] == 12  # the lock went with the first run


def test_label_job_lock_in_python(tmp_path, scene, scene_folder):
    seg = oracle_segmenter(scene)
    one = LabelJob(tmp_path / "out", scene.taxonomy, segmenter_spec={"sam": "x", "clip": "y"})
    two = LabelJob(tmp_path / "out", scene.taxonomy, segmenter_spec={"sam": "x", "clip": "y"})
    record = one.prepare()
    with pytest.raises(LockError, match=f"pid {os.getpid()}"):
        two.prepare()
    with pytest.raises(LockError):
        two.prepare(force=True)
    run_local(one, list_images(scene_folder), segmenter=seg)
    one.finish(record, {})
    two.finish(two.prepare(), {})  # free again after finish


def test_index_holds_a_lock_on_the_database(tmp_path, scene, scene_folder):
    from clipsam.lock import FolderLock
    from clipsam.search import RegionIndex
    from clipsam.segmenter import Segmenter
    from clipsam.testing import OracleEmbedder, OracleProposer

    seg = Segmenter.from_models(OracleProposer(scene), OracleEmbedder(scene), text_cache=False)
    db = tmp_path / "db"
    with FolderLock(db, "region database"), pytest.raises(LockError, match="region database is in use"):
        RegionIndex(db, seg, taxonomy=scene.taxonomy).add(scene_folder)
    assert RegionIndex(db, seg, taxonomy=scene.taxonomy).add(scene_folder)["added"] == 6


# -- killed parents ---------------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_parent_is_killed(tmp_path, photos):
    out = tmp_path / "out"
    parent = subprocess.Popen([sys.executable, "-m", "clipsam.cli", "label", str(photos), "-t", "coco", "--out",
                               str(out), *TINY, "--json", "--workers", "2"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        def workers_busy() -> bool:
            return len(list((out / "parts").glob("*.json"))) >= 1 if (out / "parts").is_dir() else False

        assert _wait_for(workers_busy), "no image finished"
        workers = [p for p in _children(parent.pid)
                   if "spawn_main" in (Path("/proc") / str(p) / "cmdline").read_bytes().decode(errors="replace")]
        assert len(workers) >= 2, workers
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert _wait_for(lambda: not any(_alive(p) for p in workers), timeout=20), \
        f"workers {[p for p in workers if _alive(p)]} outlived their parent"


# -- full disks -------------------------------------------------------------------------------------------
def _leftover_tmp(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]


def test_a_full_disk_mid_run_loses_nothing_and_leaves_no_tmp(tmp_path, scene, scene_folder, monkeypatch):
    """The disk fills after two images: the run stops with ENOSPC, the two finished parts stay, no temp files
    remain; once there is space again the same job resumes to the same annotations as an uninterrupted run."""
    seg = oracle_segmenter(scene)
    items = list_images(scene_folder)
    ref = LabelJob(tmp_path / "ref", scene.taxonomy, filters=Filters(include_unknown=True),
                   segmenter_spec={"sam": "x", "clip": "y"})
    ref_record = ref.prepare()
    run_local(ref, items, segmenter=seg)
    ref.finish(ref_record, {})

    job = LabelJob(tmp_path / "out", scene.taxonomy, filters=Filters(include_unknown=True),
                   segmenter_spec={"sam": "x", "clip": "y"})
    record = job.prepare()
    done = []

    def on_result(res):
        done.append(res)
        if len(done) == 2:  # from now on every write into OUT fails as on a full disk
            monkeypatch.setattr("builtins.open", _failing_open(tmp_path / "out"))

    with pytest.raises(OSError) as info:
        run_local(job, items, segmenter=seg, on_result=on_result)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    job.close()
    parts = sorted((tmp_path / "out" / "parts").glob("*.json"))
    assert len(parts) == 2 and all(json.loads(p.read_text())["regions"] for p in parts)
    assert _leftover_tmp(tmp_path / "out") == []

    again = LabelJob(tmp_path / "out", scene.taxonomy, filters=Filters(include_unknown=True),
                     segmenter_spec={"sam": "x", "clip": "y"})
    record = again.prepare()
    todo = again.pending(items)
    assert len(todo) == 4
    run_local(again, todo, segmenter=seg)
    again.finish(record, {})
    assert (tmp_path / "out" / "annotations.json").read_bytes() == (tmp_path / "ref" / "annotations.json").read_bytes()


def _failing_open(folder: Path):
    import builtins

    real_open = builtins.open

    def opener(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and str(folder) in os.fsdecode(os.fspath(file)):
            class Full:
                def __init__(self, fh):
                    self.fh = fh

                def __enter__(self):
                    return self

                def __exit__(self, *exc):
                    self.fh.close()

                def write(self, data):
                    raise OSError(errno.ENOSPC, "No space left on device", os.fsdecode(os.fspath(file)))

                def __getattr__(self, name):
                    return getattr(self.fh, name)

            return Full(handle)
        return handle

    return opener


@pytest.fixture()
def tiny_disk(tmp_path):
    """A real 1 MB tmpfs (needs root and mount rights; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(folder: Path) -> None:
    with contextlib.suppress(OSError), open(folder / "filler", "wb", buffering=0) as fh:
        while True:
            fh.write(b"\0" * 4096)


@pytest.mark.slow
def test_a_really_full_disk_is_one_line_and_leaves_no_tmp(tiny_disk, photos):
    out = tiny_disk / "out"
    out.mkdir()
    _fill(tiny_disk)
    proc = _cli("label", photos, "-t", "coco", "--out", out, *TINY, check=False)
    text = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "No space left on device (ENOSPC)" in text and "Traceback" not in text
    assert _leftover_tmp(out) == []


@pytest.mark.slow
def test_real_full_disk_mid_run_keeps_finished_parts(tiny_disk, photos):
    """With real ENOSPC from the kernel: fill the disk once two images are done."""
    out = tiny_disk / "out"
    proc = subprocess.Popen([sys.executable, "-m", "clipsam.cli", "label", str(photos), "-t", "coco", "--out",
                             str(out), *TINY, "--unknown"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _wait_for(lambda: len(list((out / "parts").glob("*.json"))) >= 2 if (out / "parts").is_dir() else False)
    _fill(tiny_disk)
    _, stderr = proc.communicate(timeout=300)
    text = " ".join(stderr.split())
    if proc.returncode == 0:
        pytest.skip("the run finished before the disk filled")
    assert proc.returncode == 2 and "ENOSPC" in text and "Traceback" not in text
    assert _leftover_tmp(out) == []
    parts = list((out / "parts").glob("*.json"))
    assert len(parts) >= 2 and all(json.loads(p.read_text()) for p in parts)  # each finished part is whole
    (tiny_disk / "filler").unlink()
    resumed = json.loads(_cli("label", photos, "-t", "coco", "--out", out, *TINY, "--unknown", "--json").stdout)
    assert resumed["resumed"] >= 2 and resumed["images"] == 12


# -- names and sources ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses file names that are not UTF-8")
def test_non_utf8_file_names_are_labelled_and_indexed(tmp_path, chelsea):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(chelsea[:90, :120]).save(src / "plain.png")
    weird = os.fsdecode(b"caf\xe9 \xff.png")  # Latin-1 bytes: not UTF-8
    Image.fromarray(chelsea[50:140, 100:220]).save(os.path.join(os.fsencode(src), os.fsencode(weird)))
    summary = json.loads(_cli("label", src, "-t", "coco", "--out", tmp_path / "out", *TINY, "--json",
                              "--unknown").stdout)
    assert summary["images"] == 2 and summary["errors"] == 0
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert sorted(im["file_name"] for im in coco["images"]) == sorted(["plain.png", weird])
    assert {a["image_id"] for a in coco["annotations"]} == {im["id"] for im in coco["images"]}
    table = _cli("label", src, "-t", "coco", "--out", tmp_path / "out", *TINY, "--unknown")  # rich output
    assert "Traceback" not in table.stderr

    indexed = json.loads(_cli("index", src, "--db", tmp_path / "db", *TINY, "--json").stdout)
    assert indexed["added"] == 2 and indexed["failed"] == 0
    from clipsam.search import RegionIndex
    from clipsam.segmenter import Segmenter

    hits = RegionIndex(tmp_path / "db", Segmenter(sam="tiny-random", clip="tiny-random", text_cache=False)).search(
        "cat", k=100)
    paths = {h.image_path for h in hits}
    assert os.path.join(str(src), weird) in paths and all(os.path.isfile(p) for p in paths)


@pytest.mark.slow
def test_unsupported_files_get_an_error_row(tmp_path, chelsea):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(chelsea[:90, :120]).save(src / "ok.png")
    (src / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (src / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic")
    (src / "notes.txt").write_text("not an image")
    (src / ".hidden.png").write_bytes(b"x")
    summary = json.loads(_cli("label", src, "-t", "coco", "--out", tmp_path / "out", *TINY, "--json").stdout)
    assert summary["images"] == 1 and summary["errors"] == 2
    rows = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    reasons = {os.path.basename(r["path"]): r["reason"] for r in rows}
    assert set(reasons) == {"drawing.svg", "photo.heic"}
    assert "SVG is a vector format" in reasons["drawing.svg"]


@pytest.mark.slow
def test_coco_sources_are_confined_to_their_root(tmp_path, chelsea):
    root = tmp_path / "root"
    (root / "imgs").mkdir(parents=True)
    Image.fromarray(chelsea[:40, :40]).save(root / "imgs" / "a.png")
    Image.fromarray(chelsea[:40, :40]).save(tmp_path / "secret.png")
    ok = root / "ok.json"
    ok.write_text(json.dumps({"images": [{"id": 1, "file_name": "imgs/a.png"},
                                         {"id": 2, "file_name": "imgs/../imgs/a.png"}]}))
    assert [i.image_id for i in list_images(ok)] == [1, 2]
    for name in ("../secret.png", str(tmp_path / "secret.png"), "imgs/../../secret.png"):
        bad = root / "bad.json"
        bad.write_text(json.dumps({"images": [{"id": 1, "file_name": name}]}))
        with pytest.raises(ClipsamError, match="outside the image root"):
            list_images(bad)
        assert Path(list_images(bad, allow_outside_root=True)[0].path).resolve() == (tmp_path / "secret.png")
    proc = _cli("label", bad, "-t", "coco", "--out", tmp_path / "o", *TINY, "--allow-outside-root", "--json")
    assert json.loads(proc.stdout)["images"] == 1


@pytest.mark.slow
def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    from clipsam.core.taxonomy import load_taxonomy
    from clipsam.errors import TaxonomyError

    lines = ["l0: &l0 [leaf, leaf, leaf, leaf, leaf, leaf, leaf, leaf, leaf]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    lines.append("nodes: [{name: root, prompts: *l8}]")  # 9**9 = 387 million prompts from ~600 bytes
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 700
    with pytest.raises(TaxonomyError, match="aliases .* are not allowed"):
        load_taxonomy(bomb)
    many = tmp_path / "many.yaml"
    many.write_text("nodes:\n" + "".join(f"  - n{k}\n" for k in range(100_001)))
    with pytest.raises(TaxonomyError, match="over the limit of 100,000"):
        load_taxonomy(many)


# -- caches -----------------------------------------------------------------------------------------------
def test_text_cache_writers_never_share_a_temporary_file(tmp_path, monkeypatch):
    """Workers that embed the same label at once used to write one ``.tmp.npy`` name, and could publish a file
    another writer was still writing."""
    import clipsam.core.labels as L

    class Embedder:
        cache_key = "test-model"

        def embed_texts(self, texts):
            time.sleep(0.01)
            return np.ones((len(texts), 4), np.float32)

    names: list[str] = []
    real_save = np.save

    def spy(file, arr, *args, **kwargs):
        names.append(str(file))
        time.sleep(0.01)
        return real_save(file, arr, *args, **kwargs)

    monkeypatch.setattr(L.np, "save", spy)
    barrier = threading.Barrier(8)
    errors = []

    def worker():
        bank = L.TextBank(Embedder(), cache_dir=tmp_path)
        barrier.wait()
        try:
            bank.embed([("dog",)])
        except Exception as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(names) == 8 and len(set(names)) == 8
    files = list(tmp_path.rglob("*"))
    assert [p.name for p in files if p.is_file() and ".tmp" in p.name] == []
    cached = [p for p in files if p.suffix == ".npy"]
    assert len(cached) == 1 and np.load(cached[0]).shape == (4,)


def test_search_metadata_is_replaced_in_one_commit(tmp_path, scene, scene_folder):
    import lancedb

    from clipsam.search import RegionIndex
    from clipsam.segmenter import Segmenter
    from clipsam.testing import OracleEmbedder, OracleProposer

    seg = Segmenter.from_models(OracleProposer(scene), OracleEmbedder(scene), text_cache=False)
    index = RegionIndex(tmp_path / "db", seg, taxonomy=scene.taxonomy)
    index.add(scene_folder)
    for k in range(3):
        index._write_meta({**index.meta(), "indexed_rows": k})
    table = lancedb.connect(str(tmp_path / "db")).open_table("meta")
    for version in table.list_versions():  # every version a reader (or a kill) can land on holds the metadata
        table.checkout(version["version"])
        assert table.count_rows() == 1
    table.checkout_latest()
    assert index.meta()["indexed_rows"] == 2


# -- search -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_search_paths_work_from_another_directory(tmp_path, chelsea):
    work = tmp_path / "work"
    (work / "photos").mkdir(parents=True)
    for k in range(2):
        Image.fromarray(chelsea[k * 30: k * 30 + 100, :150]).save(work / "photos" / f"p{k}.png")
    _cli("index", "photos", "--db", "regions", *TINY, "--json", cwd=work)  # relative paths
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    hits = json.loads(_cli("search", "cat", "--db", work / "regions", "-k", "3", "--json", cwd=elsewhere).stdout)
    assert hits and all(os.path.isabs(h["image_path"]) and os.path.isfile(h["image_path"]) for h in hits)
    crops = _cli("search", "cat", "--db", work / "regions", "-k", "2", "--save-crops", "hits", cwd=elsewhere)
    assert "Traceback" not in crops.stderr and len(list((elsewhere / "hits").glob("*_crop.png"))) == 2
    typo = _cli("search", "cat", "--db", work / "regions", "--label", "anmal", check=False, cwd=elsewhere)
    text = " ".join(typo.stderr.split())
    assert typo.returncode == 2 and "'anmal' names no label of taxonomy 'everyday'" in text and "'animal'" in text


def test_search_filters_are_literal_and_contained(tmp_path, scene, scene_folder, monkeypatch):
    from clipsam.search import RegionIndex
    from clipsam.segmenter import Segmenter
    from clipsam.testing import OracleEmbedder, OracleProposer

    seg = Segmenter.from_models(OracleProposer(scene), OracleEmbedder(scene), text_cache=False)
    index = RegionIndex(tmp_path / "db", seg, taxonomy=scene.taxonomy)
    index.add(scene_folder)
    assert index.search("cat", k=100, label="%") == []  # a label, not a pattern
    assert index.search("cat", k=100, label="_nimal") == []
    animals = index.search("cat", k=100, label="animal")
    assert animals and {h.label_path[0] for h in animals} == {"animal"}
    for where in ("1=1) OR (1=1", "kind = 'part'); DROP TABLE regions; --", "kind = 'part' -- x", "(kind = 'x'"):
        with pytest.raises(ClipsamError, match="where filter"):
            index.search("cat", k=100, label="vehicle", where=where)
    parts = index.search("cat", k=100, label="vehicle", where="kind = 'part' OR kind = 'object'")
    assert parts and {h.label_path[0] for h in parts} == {"vehicle"}  # the OR stays inside its parentheses
    quoted = index.search("cat", k=100, where="label = 'it''s (not) a ;label'")
    assert quoted == []

    monkeypatch.chdir(tmp_path)
    Image.fromarray(scene.image).save(tmp_path / "dog.png")
    os.replace(tmp_path / "dog.png", tmp_path / "dog")  # a file named like the text query
    text = seg.text_bank.embed([("dog",)])[0]
    assert np.array_equal(index.embed_query("dog"), text)
    assert [h.label for h in index.search("dog", k=1)] == ["dog"]


@pytest.mark.slow
def test_a_read_only_clipsam_home(tmp_path, chelsea, monkeypatch):
    """EROFS: downloading weights is one line naming the folder; segmenting needs no write there."""
    from typer.testing import CliRunner

    from clipsam.cli import app

    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(home)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        monkeypatch.setenv("CLIPSAM_HOME", str(home))
        res = CliRunner().invoke(app, ["weights", "download", "vit_b"])  # creating the cache folder fails first
        text = " ".join(res.output.split())
        assert res.exit_code == 2 and "Read-only file system (EROFS)" in text and "CLIPSAM_HOME" in text
        assert str(home) in text
        img = tmp_path / "p.png"
        Image.fromarray(chelsea[:60, :80]).save(img)
        run = subprocess.run([sys.executable, "-m", "clipsam.cli", "segment", str(img), "cat", *TINY, "--json"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
    finally:
        subprocess.run(["umount", "-l", str(home)], capture_output=True)
