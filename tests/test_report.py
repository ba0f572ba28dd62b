"""The HTML report: self-contained, every region of the oracle scene in its tree and on its image, checked in
headless Chromium (Debian's ``chromium``; ``.ci/run`` installs it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsam.cli import app
from clipsam.testing import oracle_label_run, synthetic_scene

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
ODD = os.fsdecode(b"caf\xe9 <b>&amp;.png")  # not UTF-8, and HTML in the name


class _Elements(HTMLParser):
    """Every element's tag and attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))


def _elements(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Elements()
    parser.feed(page)
    return parser.elements


@pytest.fixture(scope="module")
def label_out(tmp_path_factory):
    """A finished label run of the oracle scene (objects, parts, unknown), an odd file name and a broken image."""
    root = tmp_path_factory.mktemp("report")
    scene = synthetic_scene()
    src = root / "photos"
    src.mkdir()
    Image.fromarray(scene.image).save(src / "scene.png")
    Image.fromarray(scene.image).save(src / ODD, format="PNG")
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    return root / "out", oracle_label_run(src, root / "out", scene)


@pytest.fixture(scope="module")
def report_page(label_out):
    out, _ = label_out
    res = CliRunner().invoke(app, ["report", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["report"] == str(out / "report.html") and summary["images"] == 2 and summary["errors"] == 1
    return out / "report.html"


def test_report_is_self_contained_and_holds_every_region(label_out, report_page):
    _, coco = label_out
    page = report_page.read_bytes().decode("utf-8")  # valid UTF-8 even with a non-UTF-8 file name
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page) and "<link" not in page
    assert "<script src" not in page and "url(http" not in page and "@import" not in page
    els = _elements(page)
    images = [im for im in coco["images"]]
    assert len([a for t, a in els if t == "img" and (a.get("src") or "").startswith("data:image/")]) == 2
    sections = [a["id"] for t, a in els if t == "section"]
    assert len(sections) == 2
    nodes = {a["data-r"] for t, a in els if t in ("div", "summary") and a.get("data-r")}
    paths = {a["data-r"] for t, a in els if t == "path" and a.get("data-r")}
    for k, im in enumerate(images):
        ids = {f"{k}-{a['id']}" for a in coco["annotations"] if a["image_id"] == im["id"]}
        assert len(ids) == 10 and ids <= nodes and ids <= paths  # every region: a tree node and a mask
    assert "caf\ufffd &lt;b&gt;&amp;amp;.png" in page and "<b>&amp;.png" not in page  # shown, escaped
    assert "broken.jpg" in page and "not an image" in page  # the errors list
    for name in ("dog/head", "wheel", "ear", "unknown"):
        assert f">{name}</td>" in page  # the per-category counts
    assert "&quot;taxonomy&quot;" in page  # the run's parameters (JSON, escaped)


def test_report_errors_are_one_line(tmp_path):
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "no annotations.json here" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no such folder" in res.output


def _chromium(*args: str, cwd) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
           "--no-first-run", f"--user-data-dir={cwd / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_report_in_headless_chromium(label_out, report_page, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CLIPSAM_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (CLIPSAM_REQUIRE_BROWSER is set: .ci/run installs it)")
        pytest.skip("needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
    _, coco = label_out
    im = coco["images"][0]
    anns = {a["id"]: a for a in coco["annotations"] if a["image_id"] == im["id"]}
    ear = next(a for a in anns.values() if a["label_path"].endswith("/ear"))
    head = anns[ear["parent_id"]]
    url = report_page.resolve().as_uri()
    # the link to a region selects it: its tree node and its mask, with the folded levels above it opened
    dom = _chromium("--virtual-time-budget=3000", "--dump-dom", f"{url}#r-0-{ear['id']}", cwd=tmp_path).stdout
    els = _elements(dom)
    selected = [(t, a["data-r"]) for t, a in els if "sel" in (a.get("class") or "").split() and a.get("data-r")]
    assert sorted(selected) == sorted([("div", f"0-{ear['id']}"), ("path", f"0-{ear['id']}")]), selected
    assert f'<details open=""><summary class="node" data-r="0-{head["id"]}"' in dom  # unfolded to show the ear
    page = report_page.read_text()
    assert f'<details><summary class="node" data-r="0-{head["id"]}"' in page  # folded in the file itself
    shot = tmp_path / "report.png"
    proc = _chromium("--window-size=1280,1000", f"--screenshot={shot}", url, cwd=tmp_path)
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (1000, 1280, 3)
    thumb = pixels[140:480, 40:620]  # where the first thumbnail is drawn
    assert len(np.unique(thumb.reshape(-1, 3), axis=0)) > 50  # an image, not an empty box
    if os.environ.get("CLIPSAM_ARTIFACTS"):
        shutil.copy(shot, os.path.join(os.environ["CLIPSAM_ARTIFACTS"], "report.png"))


def test_segment_html_for_one_image(tmp_path, chelsea_path):
    page = tmp_path / "page.html"
    res = CliRunner().invoke(app, ["segment", str(chelsea_path), "--points", "200,150",
                                   "--sam", "tiny-random", "--clip", "tiny-random", "--html", str(page), "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    text = page.read_text(encoding="utf-8")
    els = _elements(text)
    nodes = {a["data-r"] for t, a in els if t in ("div", "summary") and a.get("data-r")}
    assert nodes == {f"0-{r['id']}" for r in result["regions"]} and len(nodes) == 3
    assert "<link" not in text and "http" not in re.sub(r"https://github.com/clipsam/clipsam", "", text)
    assert "points_per_side" in text or "max_side" in text  # the segmenter's parameters
    res = CliRunner().invoke(app, ["segment", str(chelsea_path), "cat", "--sam", "tiny-random", "--clip",
                                   "tiny-random", "--html", str(tmp_path / "page.txt")])
    assert res.exit_code == 2 and "unsupported file type '.txt'" in res.output
