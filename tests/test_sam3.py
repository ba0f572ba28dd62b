"""SAM 3 inside clipsam: the concept rules on plain hit lists, the semantics on the CLIP-like world with a SAM 3-like
oracle, the tiny random-weight SAM 3 (transformers' architecture) through the library and the CLI, and the
full-size entry's registry -> build path against a loopback server."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from clipsam.cli import app
from clipsam.core import masks as M
from clipsam.core.labels import LabelDecision
from clipsam.core.taxonomy import load_taxonomy
from clipsam.stages.concepts import Cluster, ConceptQuery, decide, merge_hits, object_queries, place_parts, reconcile
from clipsam.testing.world import CLIPLikeWorld, SAM3LikeProposer, level_hits

TINY3 = ["--sam", "tiny-random-sam3", "--clip", "tiny-random"]


def _box(h, w, y0, x0, y1, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return M.encode(m)


@pytest.fixture(scope="module")
def tax():
    return load_taxonomy("everyday")


# -- the rules ------------------------------------------------------------------------------------------------

def test_queries_expand_a_node_to_its_subtree_objects_only(tax):
    queries = object_queries([tax.get("animal")])
    paths = {q.node.path_str for q in queries}
    assert {"animal", "animal/dog", "animal/dog/puppy", "animal/cat"} <= paths
    assert not any(q.node.is_part for q in queries) and all(p.startswith("animal") for p in paths)
    assert len(paths) == len(queries)  # each label once


def test_dog_and_puppy_hits_are_one_puppy_region(tax):
    dog, puppy, cat = (ConceptQuery(tax.get(p), tax.get(p).name) for p in ("animal/dog", "animal/dog/puppy",
                                                                           "animal/cat"))
    queries = [dog, puppy, cat]
    a, a2, b = _box(50, 50, 5, 5, 30, 30), _box(50, 50, 5, 5, 31, 30), _box(50, 50, 35, 35, 48, 48)
    clusters = merge_hits([(0, a, 0.9), (1, a2, 0.8), (2, a, 0.3), (2, b, 0.85)])
    assert len(clusters) == 2
    big = next(c for c in clusters if len(c.members) == 3)
    d = decide(big, queries, min_confidence=0.3, descend_confidence=0.5)
    assert d.node.path_str == "animal/dog/puppy" and d.path_scores == (0.9, 0.9, 0.8)  # never increasing
    weak = decide(Cluster(a, [(0, 0.9), (1, 0.4)]), queries, min_confidence=0.3, descend_confidence=0.5)
    assert weak.node.path_str == "animal/dog"  # a weak puppy does not replace a strong dog
    only = decide(Cluster(a, [(1, 0.4)]), queries, min_confidence=0.3, descend_confidence=0.5)
    assert only.node.path_str == "animal/dog/puppy" and only.path_scores == (0.4, 0.4, 0.4)  # "puppy" asked alone
    assert decide(Cluster(a, [(2, 0.2)]), queries, min_confidence=0.3, descend_confidence=0.5).node is None
    other = next(c for c in clusters if c is not big)
    assert decide(other, queries, min_confidence=0.3, descend_confidence=0.5).node.path_str == "animal/cat"


def test_parts_go_into_the_object_that_holds_them(tax):
    dog = tax.get("animal/dog")
    head = next(p for p in dog.all_parts() if p.name == "head")
    objects = [(_box(60, 60, 0, 0, 40, 40), LabelDecision(dog, (0.9, 0.8))),
               (_box(60, 60, 42, 42, 60, 60), LabelDecision(dog, (0.9, 0.9)))]
    q = ConceptQuery(head, "dog head")
    hits = [(q, _box(60, 60, 2, 2, 12, 12), 0.9),  # inside the first dog
            (q, _box(60, 60, 30, 30, 50, 50), 0.9),  # across both: nobody's head
            (q, _box(60, 60, 0, 0, 40, 39), 0.9)]  # nearly the whole dog: not a part
    placed = place_parts(objects, hits, containment=0.8, max_part_share=0.8, min_confidence=0.3)
    assert [(j, d.node.path_str) for j, _, d in placed] == [(0, head.path_str)]
    assert placed[0][2].path_scores == pytest.approx((0.9, 0.8, 0.72))  # the object's, then object x hit


def test_an_inherited_part_gets_its_owners_path_scores(tax):
    """A part inherited from an ancestor (a puppy has the dog's head; in everyday a man has a person's head): one
    score per level of the part's own label path -- the owner's levels, then object x hit -- not the whole object's
    path scores (issue 23)."""
    dog = tax.get("animal/dog")
    puppy = next(c for c in dog.children if c.name == "puppy")
    head = next(p for p in puppy.all_parts() if p.name == "head")
    assert head.object_node() is dog  # inherited, not the puppy's own
    objects = [(_box(60, 60, 0, 0, 40, 40), LabelDecision(puppy, (0.9, 0.8, 0.7)))]
    placed = place_parts(objects, [(ConceptQuery(head, "puppy head"), _box(60, 60, 2, 2, 12, 12), 0.9)],
                         containment=0.8, max_part_share=0.8, min_confidence=0.3)
    d = placed[0][2]
    assert len(d.path_scores) == len(d.node.path) == 3
    assert d.path_scores == pytest.approx((0.9, 0.8, 0.7 * 0.9))  # animal, dog, head (0.63): not the puppy's 0.7


def test_unclaimed_masks_are_reconciled_with_the_concepts(tax):
    dog = tax.get("animal/dog")
    concept = [_box(80, 80, 10, 10, 40, 40)]
    union = _box(80, 80, 5, 5, 60, 60)  # the dog with what it lies on, labelled "dog" by CLIP
    half = _box(80, 80, 10, 10, 40, 25)  # half the dog
    elsewhere = _box(80, 80, 60, 62, 78, 78)
    rest = [(LabelDecision(dog, (0.6, 0.5)), "object")] * 2 + [(LabelDecision(None), "unknown")]
    out = reconcile(concept, [LabelDecision(dog, (0.9, 0.9))], [union, half, elsewhere], rest, containment=0.8)
    assert [(d.node, k) for d, k in out] == [(None, "unknown"), (None, "unknown part"), (None, "unknown")]


# -- semantics in the CLIP-like world ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world():
    return CLIPLikeWorld(seed=1)


def test_everything_with_concepts_gets_every_level_right(world):
    totals: dict[str, list[bool]] = {}
    for index in range(6):
        scene = world.scene(index)
        seg = world.segmenter(scene, concepts=True)
        result = seg.segment_everything(scene.image)
        assert seg.last_stats["strategy"] == "concepts"
        for key, hits in level_hits(result, scene).items():
            totals.setdefault(key, []).extend(hits)
        scores = [r.path_scores for r in result if r.label_path]
        assert all(list(s) == sorted(s, reverse=True) for s in scores)  # never increasing with depth
    rates = {k: sum(v) / len(v) for k, v in totals.items()}
    assert rates["object L1"] >= 0.95 and rates["object L2"] >= 0.95 and rates["part"] >= 0.9, rates
    assert rates["stuff"] == 1.0  # background slabs come from the automatic masks, as unknown


def test_query_expands_over_the_subtree_and_merges_dog_and_puppy(world):
    tax = world.taxonomy
    for index in range(40):
        scene = world.scene(index)
        if any(i.path == ("animal", "dog", "puppy") for i in scene.instances):
            break
    else:
        pytest.fail("no scene with a puppy")
    seg = world.segmenter(scene, concepts=True)
    proposer = seg.proposer
    assert isinstance(proposer, SAM3LikeProposer)
    result = seg.segment(scene.image, "animal")
    asked = set(proposer.asked)
    assert {"dog", "puppy", "cat"} <= asked and "car" not in asked  # the subtree, nothing else
    assert seg.last_stats["concept_queries"] == len(object_queries([tax.get("animal")]))
    animals = [i for i in scene.instances if i.kind == "object" and i.path[0] == "animal"]
    assert len(result) == len(animals)
    pup = next(r for r in result if r.label == "puppy")
    assert pup.label_path == ("animal", "dog", "puppy") and len(pup.path_scores) == 3
    proposer.asked.clear()
    dogs = seg.segment(scene.image, "dog")
    assert [r.label_path for r in dogs] == [("animal", "dog", "puppy")] or all(
        r.label_path[:2] == ("animal", "dog") for r in dogs)
    assert "animal" not in proposer.asked and "cat" not in proposer.asked


# -- the tiny random-weight SAM 3 -----------------------------------------------------------------------------

needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="the SAM 3 backend needs transformers >= 5 (clipsam[sam3])")


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory):
    import yaml
    from PIL import Image

    from clipsam.testing import synthetic_scene
    from clipsam.testing.oracle import SCENE_TAXONOMY

    scene = synthetic_scene()
    folder = tmp_path_factory.mktemp("sam3")
    (folder / "photos").mkdir()
    Image.fromarray(scene.image).save(folder / "photos" / "scene.png")
    (folder / "tax.yaml").write_text(yaml.safe_dump(SCENE_TAXONOMY))
    return folder


@needs_transformers
def test_tiny_sam3_runs_the_library_paths(scene_files):
    from clipsam import Segmenter

    seg = Segmenter(sam="tiny-random-sam3", clip="tiny-random", taxonomy=str(scene_files / "tax.yaml"),
                    min_confidence=0.2, part_confidence=0.0, text_cache=False)
    image = str(scene_files / "photos" / "scene.png")
    found = seg.segment(image, "animal")
    assert seg.last_stats["strategy"] == "concepts" and len(found) >= 1
    assert all(r.label_path[0] == "animal" for r in found)
    everything = seg.segment_everything(image, with_embeddings=True)
    kinds = {r.kind for r in everything}
    assert "object" in kinds and everything.embeddings is not None and len(everything.embeddings) == len(everything)
    with pytest.raises(Exception, match="strategy='guided'"):
        seg.segment(image, "dog", strategy="guided")
    with pytest.raises(Exception, match="no point prompts|answers text"):
        seg.segment_prompt(image, points=[[10, 10]])


@needs_transformers
def test_tiny_sam3_in_the_cli(scene_files, tmp_path):
    image = str(scene_files / "photos" / "scene.png")
    res = CliRunner().invoke(app, ["segment", image, "dog", *TINY3, "--min-confidence", "0.2", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["models"]["sam"] == "tiny-random-sam3"
    res = CliRunner().invoke(app, ["label", str(scene_files / "photos"), "-t", str(scene_files / "tax.yaml"),
                                   "--out", str(tmp_path / "labels"), *TINY3, "--json"])
    assert res.exit_code == 0, res.output
    coco = json.loads((tmp_path / "labels" / "annotations.json").read_text())
    assert len(coco["images"]) == 1
    run = json.loads((tmp_path / "labels" / "run.json").read_text())
    assert run["parameters"]["segmenter"]["unknown_sam"] == "tiny-random"
    pytest.importorskip("lancedb")
    res = CliRunner().invoke(app, ["index", str(scene_files / "photos"), "--db", str(tmp_path / "db"), *TINY3,
                                   "--taxonomy", str(scene_files / "tax.yaml"), "--json"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["segment", image, "--points", "10,10", *TINY3])
    assert res.exit_code == 2 and "Traceback" not in res.output and "clicks and boxes" in " ".join(res.output.split())


# -- the full-size entry's registry -> download -> build path -------------------------------------------------

@pytest.fixture()
def hf_server():
    """A loopback server standing in for huggingface.co: 401 without a token, the file with one."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    files: dict[str, bytes] = {}
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            auth = self.headers.get("Authorization")
            seen.append(auth)
            body = files.get(self.path)
            status = 404 if body is None else (401 if auth != "Bearer secret-token" else 200)
            payload = body if status == 200 else b'{"error": "gated"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream" if status == 200 else "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.files, httpd.seen = files, seen
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@needs_transformers
def test_sam3_entry_downloads_with_token_pins_and_builds(hf_server, monkeypatch, tmp_path):
    import dataclasses

    import torch
    from safetensors.torch import save_file

    from clipsam import weights as W
    from clipsam.errors import ChecksumError, WeightsMissingError
    from clipsam.models.build import build_proposer
    from clipsam.models.sam3 import Sam3Proposer, build_sam3_model, tiny_sam3_config

    source = build_sam3_model(tiny_sam3_config(), seed=3)
    state = {f"detector_model.{k}": v.contiguous() for k, v in source.state_dict().items()}
    state["tracker_model.memory.weight"] = torch.zeros(2, 2)  # the video model's tracker: not used here
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    hf_server.files["/facebook/sam3/resolve/main/model.safetensors"] = path.read_bytes()
    entry = W.REGISTRY["sam3"]
    assert entry.sha256 == "" and entry.format == "safetensors" and entry.extra["hf_repo"] == "facebook/sam3"
    test_entry = dataclasses.replace(entry, url=hf_server.base + "/facebook/sam3/resolve/main/model.safetensors",
                                     extra={**entry.extra, "config": tiny_sam3_config().to_dict()})
    monkeypatch.setitem(W.REGISTRY, "sam3", test_entry)

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(WeightsMissingError, match="gated Hugging Face repository.*HF_TOKEN"):
        build_proposer("sam3")
    assert not W.is_cached("sam3") and W.expected_sha256(test_entry) is None  # nothing kept, nothing pinned

    monkeypatch.setenv("HF_TOKEN", "secret-token")
    proposer = build_proposer("sam3")
    assert hf_server.seen[-1] == "Bearer secret-token"
    assert isinstance(proposer, Sam3Proposer) and proposer.name == "sam3"
    assert W.expected_sha256(test_entry) == W.sha256_file(path)  # pinned on first use
    loaded = proposer.model.state_dict()
    ref = source.state_dict()
    assert all(torch.equal(loaded[k], ref[k]) for k in ref)  # prefix stripped, tracker dropped, every tensor set
    image = np.zeros((40, 60, 3), np.uint8)
    hits = proposer.find(proposer.embed(image), ["dog"], threshold=0.0)
    assert len(hits) == 1 and all(h.rle["size"] == [40, 60] for h in hits[0])
    assert [r.status for r in W.verify(["sam3"])] == ["ok"]

    other = tmp_path / "other.safetensors"
    save_file({k: v + 1 for k, v in state.items()}, str(other))
    with pytest.raises(ChecksumError, match="pinned on first use"):
        W.import_file("sam3", other)  # a different file is refused once a copy is pinned
