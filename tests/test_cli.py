import json

import numpy as np
import pytest
from typer.testing import CliRunner

from clipsam.cli import app

TINY = ["--sam", "tiny-random", "--clip", "tiny-random"]


@pytest.fixture()
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def test_segment_query_json(run, chelsea_path):
    res = run("segment", chelsea_path, "cat, dog", *TINY, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["image_size"] == [300, 451] and data["query"] == ["cat", "dog"]
    assert all(r["label"] in ("cat", "dog") for r in data["regions"])


def test_segment_prompt_overlay_and_json_file(run, chelsea_path, tmp_path):
    overlay, saved = tmp_path / "o.png", tmp_path / "r.json"
    res = run("segment", chelsea_path, "--points", "200,150", "--points", "20,20,0", "--box", "100,50,300,250",
              *TINY, "-o", overlay, "--save-json", saved)
    assert res.exit_code == 0, res.output
    assert overlay.is_file() and json.loads(saved.read_text())["regions"][0]["kind"] == "prompt"
    assert "best first" in res.stdout


def test_segment_writes_coco_with_the_taxonomy_ids(run, chelsea_path, tmp_path):
    import contextlib
    import io

    from pycocotools.coco import COCO

    from clipsam.core.taxonomy import load_taxonomy
    from clipsam.export import category_table

    out = tmp_path / "one.json"
    res = run("segment", chelsea_path, "--taxonomy", "coco", *TINY, "--points-per-side", "4", "--coco", out)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    table = category_table(load_taxonomy("coco"), include_unknown=True)
    assert [(c["id"], c["name"]) for c in data["categories"][:len(table)]] == [(c["id"], c["name"]) for c in table]
    assert data["images"][0]["file_name"] == chelsea_path.name and data["annotations"]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out))
    assert len(coco.getAnnIds()) == len(data["annotations"])
    bad = run("segment", chelsea_path, "cat", *TINY, "--coco", tmp_path / "x.txt")
    assert bad.exit_code == 2 and "unsupported file type '.txt'" in bad.output


def test_segment_guided_strategy(run, chelsea_path):
    res = run("segment", chelsea_path, "cat", *TINY, "--strategy", "guided", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["query"] == ["cat"]


def test_segment_everything_tree(run, chelsea_path):
    res = run("segment", chelsea_path, "--taxonomy", "everyday", "--tree", *TINY, "--points-per-side", "4",
              "--part-points", "4")
    assert res.exit_code == 0, res.output
    assert "chelsea.png" in res.stdout and "regions" in res.stdout


@pytest.mark.parametrize("args, pattern", [
    (["segment", "/no/such.png", "cat"], "no such image file"),
    (["segment", "{img}", "cat", "--points", "1,2"], "either a text query or --points"),
    (["segment", "{img}", "--points", "1,x"], "expected x,y"),
    (["segment", "{img}", "--box", "1,2,3"], "x0,y0,x1,y1"),
    (["segment", "{img}", "--taxonomy", "nope.yaml"], "no such taxonomy file"),
    (["segment", "{img}", "cat", "--sam", "vit_q", "--clip", "tiny-random"], "unknown SAM model 'vit_q'"),
    (["segment", "{img}", "cat", "--sam", "tiny-random", "--clip", "vit_b"], "is a SAM checkpoint, not CLIP"),
])
def test_errors_are_one_line_and_non_zero(run, chelsea_path, args, pattern):
    import re

    res = run(*[a.replace("{img}", str(chelsea_path)) for a in args], *([] if "--sam" in args else TINY))
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert re.search(pattern, text), text
    assert "Traceback" not in res.output


def test_missing_weights_message(run, chelsea_path, monkeypatch):
    monkeypatch.setenv("CLIPSAM_OFFLINE", "1")
    res = run("segment", chelsea_path, "cat")
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "clipsam weights import vit_b" in text and "sam_vit_b_01ec64.pth" in text


def test_weights_verbs(run, tmp_path, monkeypatch):
    res = run("weights", "list", "--json")
    data = json.loads(res.stdout)
    assert {c["name"] for c in data["checkpoints"]} >= {"vit_b", "ViT-B-16/openai"}
    assert all(not c["cached"] for c in data["checkpoints"])
    assert run("weights", "list").exit_code == 0
    assert run("weights", "verify").exit_code == 0
    assert run("weights", "verify", "vit_b").exit_code == 1  # asked for, missing
    fake = tmp_path / "sam_vit_b_01ec64.pth"
    fake.write_bytes(b"not the checkpoint")
    res = run("weights", "import", "vit_b", fake)
    assert res.exit_code == 2 and "SHA-256 mismatch" in " ".join(res.output.split())
    monkeypatch.setenv("CLIPSAM_OFFLINE", "1")
    assert run("weights", "download", "vit_b").exit_code == 2


def test_taxonomy_verbs(run, tmp_path):
    assert "animal/dog/puppy" in run("taxonomy", "path", "puppy").stdout
    listed = json.loads(run("taxonomy", "list", "--json").stdout)
    assert {t["name"] for t in listed} >= {"everyday", "coco", "parts"}
    shown = json.loads(run("taxonomy", "show", "coco", "--json").stdout)
    assert shown["name"] == "coco" and len(shown["nodes"]) == 12
    assert "animal" in run("taxonomy", "show", "everyday", "--depth", "1").stdout
    hits = json.loads(run("taxonomy", "search", "car", "--json").stdout)
    assert "vehicle/car/police car" in {h["path"] for h in hits}
    assert run("taxonomy", "path", "unicorn").exit_code == 1
    good = tmp_path / "t.yaml"
    good.write_text("nodes: [dog, cat]")
    assert json.loads(run("taxonomy", "validate", good, "--json").stdout)["labels"] == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: [dog, dog]")
    res = run("taxonomy", "validate", bad)
    assert res.exit_code == 2 and "bad.yaml" in res.output and "duplicate" in res.output


def test_segment_full_resolution_flag(run, chelsea_path):
    """--max-side below the photo: masks come back at the photo's size both ways; by default they are stock SAM's
    (from logits at full resolution), with --no-full-resolution the processing-size masks scaled up."""
    from PIL import Image
    from segment_anything import SamPredictor

    from clipsam.core import masks as M
    from clipsam.testing import tiny_sam

    args = ("segment", chelsea_path, "--points", "200,150", *TINY, "--max-side", "128", "--json")
    full, fast = run(*args), run(*args, "--no-full-resolution")
    assert full.exit_code == 0 and fast.exit_code == 0, full.output + fast.output
    pred = SamPredictor(tiny_sam(0))
    pred.set_image(np.asarray(Image.open(chelsea_path).convert("RGB")))
    masks, iou, _ = pred.predict(point_coords=np.array([[200.0, 150.0]]), point_labels=np.array([1]))
    stock = [M.encode(masks[k])["counts"] for k in np.argsort(-iou, kind="stable")]
    assert [r["rle"]["counts"] for r in json.loads(full.stdout)["regions"]] == stock
    assert [r["rle"]["counts"] for r in json.loads(fast.stdout)["regions"]] != stock
