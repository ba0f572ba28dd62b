"""The user's files are never lost (issue 21, items 1-4 and 6): outputs never alias inputs, clipsam replaces only the
files it wrote, names stay within 255 bytes, stray files do not stop a run, planted links are not written through.
Every test here failed on the code before the fix; the property test runs them over generated layouts."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from clipsam.cli import app
from clipsam.dataset import LabelJob, list_images, output_stems
from clipsam.errors import ClipsamError, OutputError
from clipsam.files import NAME_MAX, atomic_write, bounded_name, fs_bytes, temp_path, written_by_clipsam
from clipsam.testing import oracle_label_run

TINY = ["--sam", "tiny-random", "--clip", "tiny-random"]


def _snapshot(folder: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every entry under *folder*: links as their target, files as their bytes (what a user would miss)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_file():
                out[str(p)] = ("file", p.read_bytes())
    return out


# -- 1. a YOLO layout labelled in place ------------------------------------------------------------------------
def test_yolo_in_place_keeps_every_image_and_refuses_the_users_labels(tmp_path, scene):
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "labels").mkdir()
    Image.fromarray(scene.image).save(ds / "images" / "a.png")
    Image.fromarray(scene.image[::-1]).save(ds / "images" / "b.png")
    (ds / "labels" / "a.txt").write_text("0 0.1 0.1 0.2 0.1 0.2 0.2\n")  # the user's own hand labels
    before = _snapshot(ds)
    with pytest.raises(OutputError, match=r"labels/a\.txt.*--overwrite"):
        oracle_label_run(ds / "images", ds, scene, formats=("yolo",))
    after = _snapshot(ds)
    assert {k: after.get(k) for k in before} == before  # every image and label as it was
    assert set(after) - set(before) == {str(ds / ".clipsam.lock")}  # nothing written but the (empty) lock


def test_yolo_in_place_without_labels_writes_them_beside_the_images(tmp_path, scene):
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    Image.fromarray(scene.image).save(ds / "images" / "a.png")
    data = (ds / "images" / "a.png").read_bytes()
    for _ in range(2):  # and a rerun
        oracle_label_run(ds / "images", ds, scene, formats=("yolo",))
        image = ds / "images" / "a.png"
        assert not image.is_symlink() and image.read_bytes() == data  # still the user's image, not a link to itself
        assert (ds / "labels" / "a.txt").read_text().strip()
    coco = json.loads((ds / "annotations.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["a.png"]  # its own outputs were not labelled as images


def test_a_regular_file_where_clipsam_puts_image_links_is_never_replaced(tmp_path, scene):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    Image.fromarray(scene.image).save(photos / "a.png")
    oracle_label_run(photos, out, scene, formats=("yolo",))
    link = out / "images" / "a.png"
    assert link.is_symlink()
    link.unlink()
    link.write_bytes(b"the user's own file")
    with pytest.raises(OutputError, match="images/a.png"):
        oracle_label_run(photos, out, scene, formats=("yolo",))
    assert link.read_bytes() == b"the user's own file"


# -- 2. outputs that are inputs, or files clipsam did not write --------------------------------------------------
@pytest.mark.parametrize("option", ["--out", "--save-json", "--html", "--coco"])
def test_segment_never_writes_over_its_input(tmp_path, scene, option):
    suffix = {"--out": ".png", "--save-json": ".png", "--html": ".html", "--coco": ".json"}[option]
    image = tmp_path / f"in{suffix}"
    Image.fromarray(scene.image).save(image, format="PNG")
    data = image.read_bytes()
    link = tmp_path / f"link{suffix}"
    link.symlink_to(image)
    for target in (image, link):
        res = CliRunner().invoke(app, ["segment", str(image), "cat", *TINY, option, str(target)])
        assert res.exit_code == 2 and "never writes over its inputs" in res.output, res.output
        assert image.read_bytes() == data


def test_segment_replaces_its_own_outputs_but_not_the_users_files(tmp_path, scene):
    image = tmp_path / "in.png"
    Image.fromarray(scene.image).save(image)
    outs = {"--out": tmp_path / "o.png", "--save-json": tmp_path / "o.json", "--coco": tmp_path / "c.json",
            "--html": tmp_path / "o.html"}
    args = ["segment", str(image), "cat", *TINY, *[v for k, p in outs.items() for v in (k, str(p))]]
    for _ in range(2):  # a rerun replaces what the first run wrote
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        assert all(written_by_clipsam(p) for p in outs.values())
    for option, path in outs.items():
        path.write_bytes(b"someone else's file")
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and f"{option} {path}: exists and was not written by clipsam" in res.output
        assert path.read_bytes() == b"someone else's file"
        res = CliRunner().invoke(app, [*args, "--overwrite"])
        assert res.exit_code == 0 and written_by_clipsam(path)


def test_label_refuses_a_folder_of_someone_elses_files_unless_asked(tmp_path, scene):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    Image.fromarray(scene.image).save(photos / "a.png")
    (out / "semantic").mkdir(parents=True)
    (out / "semantic" / "a.png").write_bytes(b"not clipsam's")
    with pytest.raises(OutputError, match=r"semantic/a\.png"):
        oracle_label_run(photos, out, scene, pngs=True)
    assert (out / "semantic" / "a.png").read_bytes() == b"not clipsam's" and not (out / "run.json").exists()
    oracle_label_run(photos, out, scene, pngs=True, overwrite=True)
    assert written_by_clipsam(out / "semantic" / "a.png")


# -- 3. long names ------------------------------------------------------------------------------------------
def test_names_at_the_file_system_limit_label_and_resume(tmp_path, scene):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    long_names = ["x" * 246 + ".png", "é" * 123 + ".png", "y" * 251 + ".png"]  # 250, 250 and 255 bytes
    for name in long_names:
        Image.fromarray(scene.image).save(photos / name)
    Image.fromarray(scene.image).save(photos / ("x" * 246 + ".jpg"))  # its stem repeats: keeps the ending
    for _ in range(2):
        coco = oracle_label_run(photos, out, scene, formats=("yolo",), pngs=True)
    assert len(coco["images"]) == 4
    written = [p for p in out.rglob("*")]
    assert written and all(fs_bytes(p.name) <= NAME_MAX for p in written)
    stems = [json.loads(p.read_text())["source"]["stem"] for p in (out / "parts").glob("*.json")]
    assert len(set(stems)) == 4
    for stem in stems:
        assert (out / "semantic" / f"{stem}.png").is_file() and (out / "labels" / f"{stem}.txt").is_file()


def test_temporary_and_derived_names_are_bounded():
    for name in ("a" * 255, "é" * 127, os.fsdecode(b"\xff" * 255), "short.png"):
        tmp = temp_path(Path("/x") / name)
        assert fs_bytes(tmp.name) <= NAME_MAX and tmp.name.startswith(".") and tmp.name.endswith(".tmp")
    assert bounded_name("a" * 300) != bounded_name("a" * 301)
    assert fs_bytes(bounded_name("é" * 200, 100)) <= 100
    stems = output_stems(["d/" + "z" * 254 + ".png", "d/" + "z" * 254 + ".jpg"], [1, 2])
    assert len(set(stems)) == 2 and all(fs_bytes(s.split("/")[-1]) + 5 <= NAME_MAX for s in stems)


# -- 4. stray files in OUT/parts -----------------------------------------------------------------------------
def test_stray_files_in_parts_do_not_stop_the_run(tmp_path, scene):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    Image.fromarray(scene.image).save(photos / "a.png")
    first = oracle_label_run(photos, out, scene)
    (out / "parts" / "._1.json").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (out / "parts" / "notes.json").write_text("{}")
    (out / "parts" / "12.json").write_text("{not json")
    (out / "annotations.json").unlink()
    again = oracle_label_run(photos, out, scene)
    assert again == first


# -- 6. planted links ---------------------------------------------------------------------------------------
def test_a_planted_lock_link_is_refused_and_its_target_untouched(tmp_path, scene):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".clipsam.lock").symlink_to(victim)
    job = LabelJob(out, scene.taxonomy, segmenter_spec={"sam": "x", "clip": "y"})
    with pytest.raises(OutputError, match="symbolic link"):
        job.prepare()
    assert victim.read_text() == "precious"


def test_a_lock_file_that_is_not_a_regular_file_is_refused(tmp_path, scene):
    out = tmp_path / "out"
    (out / ".clipsam.lock").mkdir(parents=True)
    with pytest.raises(OutputError, match="not a regular file"):
        LabelJob(out, scene.taxonomy, segmenter_spec={"sam": "x", "clip": "y"}).prepare()


def test_planted_links_in_out_are_replaced_never_written_through(tmp_path, scene):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    Image.fromarray(scene.image).save(photos / "a.png")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out.mkdir()
    (out / "annotations.json").symlink_to(victim)
    (out / "errors.jsonl").symlink_to(victim)
    oracle_label_run(photos, out, scene)
    assert victim.read_text() == "precious" and not (out / "annotations.json").is_symlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "semantic").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(OutputError, match="semantic: is a symbolic link"):
        oracle_label_run(photos, out, scene, pngs=True, force=True)
    assert list(elsewhere.iterdir()) == []


def test_atomic_write_never_follows_a_planted_temporary_name(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "out.json"
    planted = tmp_path / ".out.json.planted.tmp"
    planted.symlink_to(victim)
    monkeypatch.setattr("clipsam.files.temp_path", lambda path: planted)  # the attacker guessed the name
    with pytest.raises(FileExistsError):
        atomic_write(target, b"{}")
    assert victim.read_text() == "precious" and not target.exists()


# -- the same promises over generated layouts ------------------------------------------------------------------
_NAMES = st.sampled_from(["a.png", "a.jpg", "b.png", "x" * 246 + ".png", "é" * 120 + ".png",
                          os.fsdecode(b"caf\xe9.png"), "sub/a.png", "sub/deeper/c.png", "[/x].png", "-n.png"])
_LAYOUTS = st.sampled_from(["sibling", "in_place", "inside_source", "is_source"])
_PLANTS = st.lists(st.sampled_from(["link_to_input", "user_label", "user_png", "stray_part", "lock_link",
                                    "user_annotations"]), max_size=3, unique=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(_NAMES, min_size=1, max_size=4, unique=True), layout=_LAYOUTS, plants=_PLANTS,
       formats=st.sampled_from([(), ("yolo",)]), pngs=st.booleans())
def test_no_input_file_ever_changes(tmp_path_factory, scene, names, layout, plants, formats, pngs):
    """Whatever the names, the folder layout and what was planted in OUT beforehand, a label run (and its rerun)
    either finishes or stops with one clear error, and no input file, nor any file a link in OUT points to,
    changes."""
    base = tmp_path_factory.mktemp("layout")
    source = base / "ds" / "images" if layout == "in_place" else base / "photos"
    out = {"sibling": base / "out", "in_place": base / "ds", "inside_source": source / "out",
           "is_source": source}[layout]
    for name in names:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.image).save(source / name, format="PNG")
    victim = base / "victim.txt"
    victim.write_text("precious")
    first = source / names[0]
    stem = list_images(source)[0].output_stem
    plant = {"link_to_input": lambda: (out / "labels" / f"{stem}.txt", first),
             "user_label": lambda: (out / "labels" / f"{stem}.txt", None),
             "user_png": lambda: (out / "semantic" / f"{stem}.png", None),
             "stray_part": lambda: (out / "parts" / "._1.json", None),
             "lock_link": lambda: (out / ".clipsam.lock", victim),
             "user_annotations": lambda: (out / "annotations.json", None)}
    for what in plants:
        path, target = plant[what]()
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():  # two plants for one path: the first stays
            continue
        if target is not None:
            path.symlink_to(target)
        else:
            path.write_bytes(b"the user's")
    inputs = _snapshot(source)
    inputs = {k: v for k, v in inputs.items() if not k.startswith(str(out) + os.sep) or k in
              {str(source / n) for n in names}}
    victim_before = victim.read_bytes()
    for _ in range(2):
        try:
            oracle_label_run(source, out, scene, formats=formats, pngs=pngs)
        except ClipsamError as exc:
            assert "\n" not in str(exc)
        after = _snapshot(source)
        assert {k: after.get(k) for k in inputs} == inputs
        assert victim.read_bytes() == victim_before
    assert all(fs_bytes(p.name) <= NAME_MAX for p in out.rglob("*"))


def test_hashes_of_inputs_in_a_cli_run_are_unchanged(tmp_path, scene):
    """The CLI path too: `clipsam label ds/images --out ds --format yolo` on a dataset with its own labels."""
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "labels").mkdir()
    Image.fromarray(scene.image).save(ds / "images" / "a.png")
    (ds / "labels" / "a.txt").write_text("0 0.1 0.1 0.2 0.1 0.2 0.2\n")
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in ds.rglob("*") if p.is_file()}
    res = CliRunner().invoke(app, ["label", str(ds / "images"), "--out", str(ds), "--format", "yolo",
                                   "--taxonomy", "everyday", *TINY, "--json"])
    assert res.exit_code == 2 and "clipsam did not write" in res.output and "Traceback" not in res.output
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in digest} == digest
    assert not (ds / "images" / "a.png").is_symlink()


def test_search_crops_never_write_through_links_or_over_the_users_files(tmp_path, scene, tiny):
    """``search --save-crops`` writes its crops like every other output: marked, atomically, never through a planted
    link, and over an existing file only when clipsam wrote it (or with --overwrite)."""
    pytest.importorskip("lancedb")
    from clipsam.search import RegionIndex

    Image.fromarray(scene.image).save(tmp_path / "a.png")
    RegionIndex(tmp_path / "db", tiny, taxonomy=None).add([tmp_path / "a.png"])
    crops = tmp_path / "crops"
    crops.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (crops / "001_crop.png").symlink_to(victim)
    args = ["search", "anything", "--db", str(tmp_path / "db"), "-k", "2", "--save-crops", str(crops)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "001_crop.png: exists and was not written by clipsam" in res.output, res.output
    assert victim.read_text() == "precious"
    res = CliRunner().invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert victim.read_text() == "precious" and not (crops / "001_crop.png").is_symlink()
    assert written_by_clipsam(crops / "001_crop.png") and written_by_clipsam(crops / "001_overlay.png")
    assert CliRunner().invoke(app, args).exit_code == 0  # its own crops are replaced without asking


def test_errors_about_a_list_file_say_what_is_wrong(tmp_path, monkeypatch):
    """An oversized list file is "over the limit", not "not UTF-8" (the size cap's message comes through)."""
    import clipsam.dataset as D

    listing = tmp_path / "list.txt"
    listing.write_text("a.png\n" * 10)
    monkeypatch.setattr(D, "MAX_DATA_BYTES", 20)
    with pytest.raises(ClipsamError, match="over the 20-byte limit"):
        list_images(listing)
    listing.write_bytes(b"\xff\xfe not text")
    monkeypatch.undo()
    with pytest.raises(ClipsamError, match="not UTF-8 text"):
        list_images(listing)


def test_demo_out_that_is_a_file_is_one_clear_line(tmp_path):
    (tmp_path / "f").write_text("x")
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "f")])
    assert res.exit_code == 2 and "is a file; give a folder" in res.output
