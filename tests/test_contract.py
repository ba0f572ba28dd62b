"""One contract over every backend of the registry (:mod:`clipsam.models.backends`), run on its tiny version: every
public path -- segment, segment_everything, segment_prompt, the label job, the region index and the CLI -- works or
refuses in one line before any model is built, as the backend's capabilities say. A new backend gets this suite by
adding its registry entry."""

from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsam import Segmenter
from clipsam.cli import app
from clipsam.errors import ConfigError
from clipsam.models.backends import BACKENDS, CAPABILITIES, check_options

_NEEDS = {"sam2": "sam2", "sam3": "transformers"}


def _backends():
    out = []
    for backend in BACKENDS.values():
        need = _NEEDS.get(backend.name)
        marks = [pytest.mark.slow] if backend.name != "sam" else []
        if need and importlib.util.find_spec(need) is None:
            marks.append(pytest.mark.skip(reason=f"the {backend.name} backend needs {need}"))
        out.append(pytest.param(backend, id=backend.name, marks=marks))
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory, scene):
    import yaml

    from clipsam.testing.oracle import SCENE_TAXONOMY

    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(scene.image).save(folder / "a.png")
    Image.fromarray(np.ascontiguousarray(scene.image[:, ::-1])).save(folder / "b.png")
    (folder.parent / "tax.yaml").write_text(yaml.safe_dump(SCENE_TAXONOMY))
    return folder


def _segmenter(backend, scene, **kwargs):
    return Segmenter(backend.tiny, "tiny-random", taxonomy=scene.taxonomy, text_cache=False, device="cpu",
                     min_confidence=0.0, **kwargs)


def _well_formed(result, image_size):
    assert result.image_size == image_size
    ids = {r.id for r in result}
    for r in result:
        assert r.rle["size"] == list(image_size) and r.area > 0
        assert len(r.path_scores) == len(r.label_path) and (r.parent_id is None or r.parent_id in ids)
        assert r.kind in ("object", "part", "unknown", "unknown part", "prompt")


@pytest.mark.parametrize("backend", _backends())
def test_every_library_path(backend, scene):
    seg = _segmenter(backend, scene)
    assert seg.backend is backend and seg.is_concept_model == (backend.pipeline == "concepts")
    size = scene.image.shape[:2]
    everything = seg.segment_everything(scene.image, with_embeddings=True)
    _well_formed(everything, size)
    assert len(everything) >= 1 and seg.last_stats["strategy"] in ("grid", "concepts")
    found = seg.segment(scene.image, "animal")
    _well_formed(found, size)
    assert all(r.label_path[:1] == ("animal",) for r in found)
    free = seg.segment(scene.image, "zebra crossing")  # free text through the same pipeline
    _well_formed(free, size)
    if backend.can("point_prompts"):
        click = seg.segment_prompt(scene.image, points=[[size[1] // 2, size[0] // 2]])
        _well_formed(click, size)
        assert len(click) >= 1 and all(r.kind == "prompt" for r in click)
    if backend.can("grid"):
        assert len(seg.segment_everything(scene.image, points_per_side=4)) >= 1


@pytest.mark.parametrize("backend", _backends())
def test_what_a_backend_cannot_do_is_refused_in_one_line_before_any_model_is_built(backend, scene):
    calls = {
        "point_prompts": lambda s: s.segment_prompt(scene.image, points=[[5, 5]]),
        "guided": lambda s: s.segment(scene.image, "dog", strategy="guided"),
        "grid": lambda s: s.segment(scene.image, "dog", points_per_side=4),
        "bf16": lambda s: _segmenter(backend, scene, precision="bf16"),
        "onnx": lambda s: _segmenter(backend, scene, runtime="onnx"),
    }
    assert set(calls) | {"concepts", "fullres_logits"} == set(CAPABILITIES)
    for capability, call in calls.items():
        if backend.can(capability):
            continue
        seg = _segmenter(backend, scene)
        with pytest.raises(ConfigError) as err:
            call(seg)
        assert "\n" not in str(err.value) and backend.title in str(err.value)
        assert seg._proposer is None and seg._embedder is None, capability  # nothing was built
    seg = _segmenter(backend, scene)
    with pytest.raises(ConfigError, match=f"unknown generator parameter.*{re.escape(backend.title)}|no automatic"):
        seg.segment_everything(scene.image, points_per_sid=4) if backend.can("grid") else \
            check_options(backend, generator_params={"points_per_sid": 4})
    assert seg._proposer is None


@pytest.mark.parametrize("backend", _backends())
def test_the_cli_label_job_and_index(backend, scene, photos, tmp_path):
    models = ["--sam", backend.tiny, "--clip", "tiny-random", "--device", "cpu"]
    tax = str(photos.parent / "tax.yaml")
    res = CliRunner().invoke(app, ["segment", str(photos / "a.png"), "animal", "--taxonomy", tax, *models,
                                   "--min-confidence", "0", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["image_size"] == list(scene.image.shape[:2])
    res = CliRunner().invoke(app, ["label", str(photos), "--out", str(tmp_path / "out"), "--taxonomy", tax, *models,
                                   "--unknown"])
    assert res.exit_code == 0, res.output
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert len(coco["images"]) == 2 and coco["annotations"]
    if importlib.util.find_spec("lancedb") is None:
        return
    res = CliRunner().invoke(app, ["index", str(photos), "--db", str(tmp_path / "db"), "--taxonomy", tax, *models])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["search", "animal", "--db", str(tmp_path / "db"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)
