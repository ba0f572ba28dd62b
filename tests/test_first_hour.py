"""A new user's first hour (issue 22): the offline message names everything at once, README's taxonomy include works
as written, the CLI has --version and one-line usage errors, its output and hints say what matters, and `clipsam
demo` shows the real pipeline without weights. Each test failed before the change it checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsam import __version__
from clipsam.cli import app
from clipsam.core.taxonomy import load_taxonomy, shipped_taxonomies

TINY = ["--sam", "tiny-random", "--clip", "tiny-random"]


def _clipsam(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The installed command as a user runs it (a new process: real stdout, stderr and exit code)."""
    return subprocess.run([sys.executable, "-m", "clipsam", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_offline_first_run_names_every_missing_file_at_once(tmp_path, chelsea_path):
    res = _clipsam("segment", str(chelsea_path), "cat", env={"CLIPSAM_HOME": str(tmp_path), "CLIPSAM_OFFLINE": "1"})
    assert res.returncode == 2
    assert "clipsam weights import vit_b" in res.stderr and "clipsam weights import ViT-B-16/openai" in res.stderr
    assert "clipsam weights download --for segment" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_weights_download_for_a_verb():
    from clipsam.cli.weights import verb_models

    assert verb_models("segment") == ["vit_b", "ViT-B-16/openai"] and verb_models("search") == ["ViT-B-16/openai"]
    assert verb_models("label", sam="sam2.1_hiera_tiny") == ["sam2.1_hiera_tiny", "ViT-B-16/openai"]
    res = CliRunner().invoke(app, ["weights", "download", "--for", "paint"])
    assert res.exit_code == 2 and "--for must be one of segment, label, index, search" in res.output
    res = CliRunner().invoke(app, ["weights", "download", "--for", "segment"], env={"CLIPSAM_OFFLINE": "1"})
    assert res.exit_code == 2 and "offline" in res.output


@pytest.mark.parametrize("include", ["parts.yaml", "parts", "everyday"])
def test_shipped_taxonomies_are_includable_by_name_from_any_file(tmp_path, include):
    mine = tmp_path / "pets.yaml"
    mine.write_text(f"name: pets\ninclude: [{include}]\nnodes:\n  - name: animal\n    children:\n"
                    "      - name: dog\n        children: [puppy]\n")
    tax = load_taxonomy(mine)
    shipped = load_taxonomy(shipped_taxonomies()[include.removesuffix(".yaml")])
    assert len(tax) >= len(shipped) and tax.find("puppy")


def test_readme_taxonomy_example_loads_as_copied(tmp_path):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "pets.yaml").write_text(block)
    tax = load_taxonomy(tmp_path / "pets.yaml")
    assert tax.find("animal/dog/head/ear")


def test_version_and_one_line_usage_errors():
    assert _clipsam("--version").stdout.strip() == __version__
    info = json.loads(_clipsam("version", "--json").stdout)
    assert info["clipsam"] == __version__ and "torch" in info
    for args, text in ((["segment"], "Missing argument"), (["segment", "x.png", "--bogus"], "No such option"),
                       (["segment", "x.png", "--max-side", "abc"], "--max-side"), (["segmnt"], "segment")):
        res = _clipsam(*args)
        assert res.returncode == 2 and res.stderr.startswith("error:") and text in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "╭" not in res.stderr
    assert _clipsam("weights").returncode == 0  # a group alone shows its help


def test_flags_do_not_look_like_they_take_a_value():
    res = CliRunner().invoke(app, ["segment", "--help"], env={"COLUMNS": "200"})
    rows = [line for line in res.output.splitlines() if "--tree" in line or "--json" in line or "--refine" in line]
    assert len(rows) == 3 and not any("<bool>" in r for r in rows)


def test_hints_that_do_not_mislead(tmp_path, scene):
    res = CliRunner().invoke(app, ["taxonomy", "path", "pupy"])
    assert res.exit_code == 1 and "did you mean 'puppy'" in res.output
    res = CliRunner().invoke(app, ["taxonomy", "show", "everyday", "--depth", "-1"])
    assert res.exit_code == 2 and "--depth must be at least 1" in res.output
    res = CliRunner().invoke(app, ["segment", "--help"], env={"COLUMNS": "200"})
    assert all(name in res.output for name in shipped_taxonomies())
    Image.fromarray(scene.image).save(tmp_path / "in.png")
    res = CliRunner().invoke(app, ["segment", str(tmp_path / "in.png"), "cat", *TINY, "--min-confidence", "0"])
    assert "lower --min-confidence" not in res.output


def test_an_unwritable_output_is_refused_before_any_model(tmp_path, scene):
    Image.fromarray(scene.image).save(tmp_path / "in.png")
    res = _clipsam("segment", str(tmp_path / "in.png"), "cat", "--out", "/proc/x.png",
                   env={"CLIPSAM_HOME": str(tmp_path / "home"), "CLIPSAM_OFFLINE": "1"})
    assert res.returncode == 2 and "cannot write into /proc" in res.stderr and "weights" not in res.stderr


def test_plurals_and_the_eval_line(tmp_path, scene):
    from clipsam.cli.common import plural

    assert (plural(1, "mask"), plural(2, "mask"), plural(1024, "region")) == ("1 mask", "2 masks", "1,024 regions")
    from clipsam.testing import oracle_label_run

    (tmp_path / "photos").mkdir()
    Image.fromarray(scene.image).save(tmp_path / "photos" / "a.png")
    oracle_label_run(tmp_path / "photos", tmp_path / "out", scene)
    ann = str(tmp_path / "out" / "annotations.json")
    res = CliRunner().invoke(app, ["eval", ann, ann])
    assert res.exit_code == 0 and "mask AP 1.000" in res.output and "AP AP" not in res.output
    assert "label precision 1.000 over every labelled prediction" in res.output and "reliability" in res.output


def test_index_shows_its_regions_and_no_lancedb_log(tmp_path, scene):
    pytest.importorskip("lancedb")
    (tmp_path / "photos").mkdir()
    Image.fromarray(scene.image).save(tmp_path / "photos" / "a.png")
    res = _clipsam("index", str(tmp_path / "photos"), "--db", str(tmp_path / "db"), *TINY, "--points-per-side", "4",
                   env={"COLUMNS": "200"})
    assert res.returncode == 0, res.stderr
    assert "WARN" not in res.stderr and "No existing dataset" not in res.stderr
    added = int(res.stdout.split("(")[1].split(" region")[0].replace(",", ""))
    assert added > 0 and f"{added:,} regions" in res.stderr.splitlines()[-1]


def test_weights_list_full_shows_hashes_urls_and_bracketed_words():
    from clipsam import weights as W

    res = CliRunner().invoke(app, ["weights", "list", "--full"])
    assert W.get("vit_b").sha256 in res.output and W.get("vit_b").url in res.output
    assert "clipsam[sam3]" in res.output  # rich used to swallow "[sam3]"


def test_a_result_prints_as_a_summary(scene):
    from clipsam.testing import oracle_segmenter

    seg = oracle_segmenter(scene).segment_everything(scene.image, taxonomy=scene.taxonomy)
    text = repr(seg)
    assert "Regions(10 regions: sofa 1.00" in text and "counts" not in text and len(text) < 400


def test_demo_shows_the_real_pipeline_without_weights(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out)], env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    for text in ("dog 1.00 [animal/dog]", "ear 1.00 [part]", "wheel", "puppy", "unknown"):
        assert text in res.output
    assert {p.name for p in out.iterdir()} >= {"scene.png", "overlay.png", "result.json", "coco.json", "page.html"}
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["annotations"]) == 10
    again = CliRunner().invoke(app, ["demo", "--out", str(out), "--json"])
    assert again.exit_code == 0 and len(json.loads(again.output)["query"]["regions"]) == 3


def test_readme_interop_matrix_names_tests_that_exist():
    """Every row of README's "What survives in each tool" names a test that exists, and every interop test file
    has a row: the table cannot claim what no test checks."""
    import ast
    import re

    tests = Path(__file__).resolve().parent
    readme = (tests.parent / "README.md").read_text()
    table = readme[readme.index("### What survives in each tool"):]
    table = table[:table.index("\n\n", table.index("| client"))]
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", table)
    assert len(named) >= 11
    for file, name in named:
        tree = ast.parse((tests / file).read_text())
        assert name in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, f"{file}::{name}"
    assert {"test_interop.py", "test_cvat.py", "test_yolo.py", "test_fiftyone.py", "test_labelstudio_server.py",
            "test_search.py"} <= {file for file, _ in named}
