"""The CLI never shows a traceback: every bad value, file or combination is one line and a non-zero exit."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsam.cli import app

TINY = ["--sam", "tiny-random", "--clip", "tiny-random"]


@pytest.fixture()
def files(tmp_path, chelsea):
    """Inputs of every kind: an image, a folder, a plain file, COCO files with bad entries, deep YAML."""
    img = tmp_path / "photo.png"
    Image.fromarray(chelsea[:64, :96]).save(img)
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.fromarray(chelsea[:64, :96]).save(folder / "a.png")
    (tmp_path / "plain").write_text("x")
    (tmp_path / "nofile.json").write_text(json.dumps({"images": [{"id": 1}]}))
    (tmp_path / "badid.json").write_text(json.dumps({"images": [{"id": "x", "file_name": "a.png"}]}))
    (tmp_path / "outside.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "../../etc/passwd"}]}))
    (tmp_path / "absolute.json").write_text(json.dumps({"images": [{"id": 1, "file_name": str(img)}]}))
    deep = "".join("  " * (2 * i) + f"- name: n{i}\n" + "  " * (2 * i) + "  children:\n" for i in range(500))
    (tmp_path / "deep.yaml").write_text("nodes:\n" + deep + "  " * 1000 + "- leaf\n")
    return tmp_path


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _mps() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


CASES = [
    # (args, pattern); {d} is the fixture folder
    (["segment", "{d}/photo.png", "cat", *TINY, "--device", "cuda"], r"no CUDA GPU is available", "cuda"),
    (["segment", "{d}/photo.png", "cat", *TINY, "--device", "mps"], r"MPS is not available", "mps"),
    (["segment", "{d}/photo.png", "cat", *TINY, "--device", "tpu"], r"unknown device 'tpu'", None),
    (["segment", "{d}/photo.png", "cat", *TINY, "--max-side", "0"], r"max_side must be .* at least 16", None),
    (["segment", "{d}/photo.png", "cat", *TINY, "--speed", "turbo"], r"--speed must be one of exact, fast", None),
    (["label", "{d}/folder", "-t", "coco", "--out", "{d}/o9", *TINY, "--speed", "turbo"],
     r"--speed must be exact or fast", None),
    (["segment", "{d}/photo.png", "cat", *TINY, "--min-confidence", "1.5"], r"min_confidence must be .*\[0, 1\]",
     None),
    (["segment", "{d}/photo.png", "cat", *TINY, "--points-per-side", "0"], r"points_per_side must be .* >= 1", None),
    (["segment", "{d}/photo.png", "cat", *TINY, "--scoring", "sideways"], r"--scoring must be one of subtree, top-down",
     None),
    (["segment", "{d}/photo.png", "cat", *TINY, "--strategy", "smart"], r"--strategy must be one of grid, guided",
     None),
    (["segment", "{d}/photo.png", *TINY, "--strategy", "guided"], r"--strategy guided needs a text query", None),
    (["segment", "{d}/photo.png", *TINY, "--region-features", "patches"], r"--region-features must be one of", None),
    (["segment", "{d}/photo.png", "cat", *TINY, "--out", "{d}/x.txt"], r"unsupported file type '.txt'", None),
    (["segment", "{d}/photo.png", "cat", *TINY, "--out", "{d}/folder/"], r"is a folder", None),
    (["segment", "{d}/photo.png", "cat", *TINY, "--out", "{d}/nowhere/o.png"], r"does not exist", None),
    (["segment", "{d}/photo.png", "cat", *TINY, "--save-json", "{d}/folder"], r"is a folder", None),
    (["segment", "{d}/photo.png", "", *TINY], r"the text query is empty", None),
    (["segment", "{d}/photo.png", " , ", *TINY], r"the text query is empty", None),
    (["segment", "{d}/photo.png", *TINY, "--part-points", "4"], r"--part-points .* needs --taxonomy", None),
    (["segment", "{d}/photo.png", *TINY, "--points", "5,5", "--points-per-side", "4"], r"no effect", None),
    (["segment", "{d}/photo.png", *TINY, "--refine"], r"--refine .* give a query", None),
    (["label", "{d}/photo.png", "-t", "coco", "--out", "{d}/o1", *TINY], r"is an image, not a collection", None),
    (["label", "{d}/folder", "-t", "coco", "--out", "{d}/plain", *TINY], r"is a file", None),
    (["label", "{d}/folder", "-t", "coco", "--out", "{d}/o2", *TINY, "--workers", "0"], r"--workers must be", None),
    (["label", "{d}/folder", "-t", "coco", "--out", "{d}/o3", *TINY, "--labels", "anmal"],
     r"'anmal' names no label .* did you mean 'animal'", None),
    (["label", "{d}/folder", "-t", "coco", "--out", "{d}/o4", *TINY, "--min-score", "2"], r"--min-score", None),
    (["label", "{d}/nofile.json", "-t", "coco", "--out", "{d}/o5", *TINY], r"images\[0\] .* has no 'file_name'",
     None),
    (["label", "{d}/badid.json", "-t", "coco", "--out", "{d}/o6", *TINY], r"has id 'x'; COCO image ids are integers",
     None),
    (["label", "{d}/folder", "-t", "coco", "--out", "{d}/o9", *TINY, "--format", "voc"],
     r"--format must be coco, yolo, label-studio, cvat or a comma-separated mix, got 'voc'", None),
    (["label", "{d}/outside.json", "-t", "coco", "--out", "{d}/o7", *TINY], r"lies outside the image root", None),
    (["label", "{d}/absolute.json", "-t", "coco", "--out", "{d}/o8", *TINY], r"lies outside the image root", None),
    (["taxonomy", "validate", "{d}/deep.yaml"], r"nested too deeply", None),
    (["serve", *TINY, "--host", "0.0.0.0"], r"--host 0.0.0.0 listens beyond this machine: give --api-key", None),
    (["serve", *TINY, "--workers", "0"], r"workers must be at least 1", None),
    (["serve", *TINY, "--timeout", "0"], r"timeout_s > 0", None),
    (["serve", *TINY, "--runtime", "gpu"], r"--runtime must be one of", None),
    (["serve", *TINY, "--label-studio-key", "k"], r"--label-studio-key needs --label-studio-url", None),
    (["serve", *TINY, "--replicas", "2"], r"--replicas must be at least 1 and needs --ray", None),
    (["labelstudio", "config", "-t", "nope"], r"nope: no such taxonomy", None),
    (["labelstudio", "config", "--shape", "circle"], r"--shape must be brush or polygon", None),
    (["labelstudio", "config", "--path", "tree"], r"--path must be text or taxonomy", None),
    (["labelstudio", "config", "--out", "{d}/x.txt"], r"unsupported file type '.txt'", None),
    (["index", "{d}/folder", "--db", "{d}/plain", *TINY], r"is a file", None),
    (["search", "dog", "--db", "{d}/plain"], r"is a file", None),
    (["search", "", "--db", "{d}/db"], r"the text query is empty", None),
    (["search", "--like", "{d}/missing.png", "--db", "{d}/db"], r"no such image file", None),
]


@pytest.mark.parametrize("args, pattern, needs_absent", CASES, ids=[" ".join(c[0][:1] + c[0][3:5]) + f"#{k}"
                                                                     for k, c in enumerate(CASES)])
def test_bad_input_is_one_line_and_non_zero(files, args, pattern, needs_absent):
    if needs_absent == "cuda" and _cuda() or needs_absent == "mps" and _mps():
        pytest.skip(f"{needs_absent} is available here")
    res = CliRunner().invoke(app, [a.replace("{d}", str(files)) for a in args])
    assert isinstance(res.exception, SystemExit), res.exception  # not an uncaught exception
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    text = " ".join(res.output.split())
    assert "Traceback" not in res.output and text.startswith("error:"), res.output
    assert re.search(pattern, text), text
    assert len(lines) <= 3, res.output  # one message (a long one wraps at the terminal width)


def test_outputs_are_checked_before_any_model_runs(files, monkeypatch):
    import clipsam.segmenter as S

    built = []
    monkeypatch.setattr(S.Segmenter, "proposer", property(lambda self: built.append(1)))
    res = CliRunner().invoke(app, ["segment", str(files / "photo.png"), "cat", *TINY, "--out", str(files / "x.txt")])
    assert res.exit_code == 2 and not built


def test_unexpected_errors_are_one_line_too(files, monkeypatch):
    import clipsam.segmenter as S

    def boom(*args, **kwargs):
        raise ZeroDivisionError("deep inside")

    monkeypatch.setattr(S.Segmenter, "segment", boom)
    res = CliRunner().invoke(app, ["segment", str(files / "photo.png"), "cat", *TINY, "--json"])
    assert isinstance(res.exception, SystemExit) and res.exit_code == 1
    assert "unexpected ZeroDivisionError: deep inside" in " ".join(res.output.split())
    assert "Traceback" not in res.output


def test_disk_errors_are_one_line(files, monkeypatch):
    """A full disk (ENOSPC) and a read-only CLIPSAM_HOME (EROFS): one line that names the file and the errno."""
    import errno

    import clipsam.weights as W

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(files / "home" / "weights"))

    monkeypatch.setattr(W, "fetch", full)
    res = CliRunner().invoke(app, ["weights", "download", "vit_b"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "No space left on device (ENOSPC)" in text and "Traceback" not in res.output

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(files / "home"))

    monkeypatch.setattr(W, "fetch", read_only)
    res = CliRunner().invoke(app, ["weights", "download", "vit_b"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "Read-only file system (EROFS)" in text and "CLIPSAM_HOME" in text


def test_markup_in_names_is_shown_not_interpreted(tmp_path, chelsea):
    """Names with [ ] crashed rich (MarkupError); the tree's [tags] were eaten as markup."""
    img = tmp_path / "cat [1] [bold]x[dim].png"
    Image.fromarray(chelsea[:64, :96]).save(img)
    runner = CliRunner()
    res = runner.invoke(app, ["segment", str(img), "[red]cat", *TINY])
    assert res.exit_code == 0, res.output
    assert "'[red]cat'" in " ".join(res.output.split())
    res = runner.invoke(app, ["segment", str(img), *TINY, "--taxonomy", "coco", "--tree"])
    assert res.exit_code == 0, res.output
    assert "cat [1] [bold]x[dim].png" in res.output
    assert "[unknown]" in res.output  # tiny-random labels nothing: every region is unknown, tag shown


def test_tree_shows_label_path_and_part_tags(scene):
    from rich.console import Console

    from clipsam.cli.segment import _rich_tree
    from clipsam.testing import oracle_segmenter

    seg = oracle_segmenter(scene).segment_everything(scene.image)
    console = Console(width=200, record=True)
    console.print(_rich_tree(seg))
    text = console.export_text()
    for tag in ("[animal/dog]", "[part]", "[unknown]", "[furniture/sofa]", "[animal/dog/puppy]"):
        assert tag in text, text


def test_empty_query_in_python_is_an_error(tiny, chelsea):
    from clipsam.errors import PromptError

    with pytest.raises(PromptError, match="empty"):
        tiny.segment(chelsea[:32, :32], " , ")


def test_label_filter_suggests_close_names(tmp_path, files):
    res = CliRunner().invoke(app, ["label", str(files / "folder"), "-t", "everyday", "--out", str(tmp_path / "o"),
                                   *TINY, "--labels", "animal,puppi"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "'puppi' names no label" in text and "'puppy'" in text


def test_help_texts_keep_their_brackets():
    res = CliRunner().invoke(app, ["label", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "pip install 'clipsam[ray]'" in res.output  # rich once ate "[ray]"
    res = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "report" in res.output
