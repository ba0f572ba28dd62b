"""``clipsam label --format cvat``: CVAT for images 1.1, read back by Datumaro's CVAT importer (what CVAT's own
import and ``datum convert`` run), with every mask, label, attribute, group and drawing order intact; converted
onward to VOC, parts stay drawn over their wholes."""

from __future__ import annotations

import json
import os
import shutil
from xml.etree import ElementTree as ET

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from clipsam.core import masks as M
from clipsam.cvat import cvat_rle, cvat_xml
from clipsam.export import paint
from clipsam.testing import oracle_label_run, synthetic_scene


def _decode(counts: list[int], box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """CVAT's RLE back to a full mask, as CVAT's reader does: runs alternate background / mask over the box."""
    left, top, width, height = box
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    out = np.zeros(size, dtype=bool)
    out[top:top + height, left:left + width] = flat.reshape(height, width)
    return out


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.data())
def test_cvat_rle_round_trips_any_mask(h, w, data):
    mask = np.asarray(data.draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w)), dtype=bool).reshape(h, w)
    counts, box = cvat_rle(mask)
    if not mask.any():
        assert counts == [] and box == (0, 0, 0, 0)
        return
    assert sum(counts) == box[2] * box[3] and all(c > 0 for c in counts[1:])
    np.testing.assert_array_equal(_decode(counts, box, (h, w)), mask)
    ys, xs = np.nonzero(mask)
    assert box == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)  # the tight box


def test_one_pixel_strips_and_a_full_image():
    for mask in (np.ones((1, 300), bool), np.ones((300, 1), bool), np.ones((5, 7), bool)):
        counts, box = cvat_rle(mask)
        assert counts == [0, mask.size] and box == (0, 0, mask.shape[1], mask.shape[0])


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("cvat")
    scene = synthetic_scene()
    (root / "images").mkdir()
    Image.fromarray(scene.image).save(root / "images" / "scene.png")
    coco = oracle_label_run(root / "images", root / "out", scene, formats=("cvat",))
    return root, coco


def _datumaro_cvat(root, coco):
    dm = pytest.importorskip("datumaro")
    folder = root / "out" / "cvat"
    dataset = dm.Dataset.import_from(str(folder), "cvat")
    (item,) = list(dataset)
    labels = dataset.categories()[dm.AnnotationType.label]
    masks = [a for a in item.annotations if a.type == dm.AnnotationType.mask]
    return dm, dataset, labels, masks


def test_datumaro_reads_every_mask_label_attribute_and_group(labelled):
    root, coco = labelled
    dm, dataset, labels, masks = _datumaro_cvat(root, coco)
    assert sorted(label.name for label in labels) == sorted(c["name"] for c in coco["categories"])
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert len(masks) == len(coco["annotations"]) == 10
    by_id = {int(m.attributes["region_id"]): m for m in masks}
    for ann in coco["annotations"]:
        m = by_id[ann["id"]]
        np.testing.assert_array_equal(m.image.astype(bool), M.decode(ann["segmentation"]))  # every pixel
        assert labels[m.label].name == names[ann["category_id"]]
        assert m.attributes["label_path"] == ann["label_path"] and m.attributes["kind"] == ann["kind"]
        assert float(m.attributes["score"]) == pytest.approx(ann["score"], abs=1e-4)
        parent = ann["parent_id"]
        assert m.attributes["parent_id"] == ("" if parent is None else str(parent))
        if parent is not None:  # a part: grouped with its whole, drawn above it
            assert m.group and m.group == by_id[parent].group and m.z_order == by_id[parent].z_order + 1
    ear = next(m for m in masks if m.attributes["label_path"] == "animal/dog/head/ear")
    assert ear.z_order == 2 and labels[ear.label].name == "ear"
    alone = [m for m in masks if m.attributes["parent_id"] == "" and not any(
        o.attributes["parent_id"] == m.attributes["region_id"] for o in masks)]
    assert alone and all(m.group == 0 for m in alone)  # no parts, no parent: no group
    assert len({m.group for m in masks if m.group}) == 3  # sofa + cat, car + wheels, dog + head + ear


def test_voc_made_from_it_keeps_parts_over_their_wholes(labelled, tmp_path):
    """Datumaro paints by z_order: every region keeps its own pixels in the VOC instance map. From the COCO file,
    which has no drawing order, the same conversion loses half of them (the contrast below)."""
    root, coco = labelled
    dm, dataset, _, _ = _datumaro_cvat(root, coco)

    def instances(ds, where):
        ds.export(str(where), "voc_segmentation", save_media=False)
        png = np.asarray(Image.open(where / "SegmentationObject" / "scene.png").convert("RGB"))
        return len(np.unique(png.reshape(-1, 3), axis=0)) - 1  # colours other than the background

    visible = paint([a["segmentation"] for a in coco["annotations"]],
                      list(range(1, len(coco["annotations"]) + 1)), (120, 200))
    assert len(np.unique(visible)) - 1 == 10  # clipsam's own paint order: every region shows
    assert instances(dataset, tmp_path / "voc") == 10
    c = tmp_path / "coco"
    (c / "annotations").mkdir(parents=True)
    (c / "images" / "default").mkdir(parents=True)
    shutil.copy(root / "out" / "annotations.json", c / "annotations" / "instances_default.json")
    shutil.copy(root / "images" / "scene.png", c / "images" / "default" / "scene.png")
    assert instances(dm.Dataset.import_from(str(c), "coco_instances"), tmp_path / "voc_coco") < 10


def test_names_xml_cannot_hold_still_give_a_valid_document(labelled):
    _, coco = labelled
    odd = dict(coco, images=[dict(coco["images"][0], file_name=os.fsdecode(b"caf\xe9\x01.png"))])
    document, written = cvat_xml(odd)
    tree = ET.fromstring(document)
    assert written == len(coco["annotations"])
    assert tree.find("image").get("name") == "caf\ufffd\ufffd.png"
    assert tree.find("version").text == "1.1"
    declared = {a.find("name").text for a in tree.iter("attribute") if a.find("name") is not None}
    assert declared == {"label_path", "kind", "score", "region_id", "parent_id"}


def test_clipsam_label_format_cvat_writes_links_and_never_replaces_a_users_file(tmp_path):
    from typer.testing import CliRunner

    from clipsam.cli import app

    (tmp_path / "photos" / "sub").mkdir(parents=True)
    Image.fromarray(synthetic_scene().image).save(tmp_path / "photos" / "sub" / "a.PNG")
    args = ["label", str(tmp_path / "photos"), "--out", str(tmp_path / "out"), "--format", "coco,cvat", "--taxonomy",
            "everyday", "--sam", "tiny-random", "--clip", "tiny-random", "--points-per-side", "4", "--json"]
    mine = tmp_path / "out" / "cvat" / "images" / "sub" / "a.PNG"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my own file")
    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0 and "cvat/images/sub/a.PNG" in res.output and "--overwrite" in res.output
    assert mine.read_bytes() == b"my own file"  # refused before anything was written
    mine.unlink()
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert mine.is_symlink() and mine.resolve() == (tmp_path / "photos" / "sub" / "a.PNG").resolve()
    tree = ET.parse(tmp_path / "out" / "cvat" / "annotations.xml")
    assert [i.get("name") for i in tree.iter("image")] == ["sub/a.PNG"]  # the relative path, its ending as it is
    assert len(list(tree.iter("mask"))) == json.loads(res.output)["cvat_masks"]  # what the summary says it wrote


def test_a_planted_link_for_the_cvat_folder_is_refused(tmp_path):
    from clipsam.errors import OutputError

    scene = synthetic_scene()
    (tmp_path / "photos").mkdir()
    Image.fromarray(scene.image).save(tmp_path / "photos" / "a.png")
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out"
    elsewhere.mkdir()
    out.mkdir()
    (out / "cvat").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(OutputError, match="cvat: is a symbolic link"):
        oracle_label_run(tmp_path / "photos", out, scene, formats=("cvat",))
    assert list(elsewhere.iterdir()) == []  # nothing written through the link
