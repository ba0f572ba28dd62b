import textwrap

import pytest

from clipsam.core.taxonomy import Taxonomy, load_taxonomy, shipped_taxonomies
from clipsam.errors import TaxonomyError

COCO_80 = {
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
}


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_taxonomies_validate_and_cover_coco():
    assert {"everyday", "coco", "parts"} <= set(shipped_taxonomies())
    for name in shipped_taxonomies():
        assert len(load_taxonomy(name)) > 10
    coco = load_taxonomy("coco")
    assert {n.name for n in coco if n.depth == 2} == COCO_80
    everyday = load_taxonomy("everyday")
    objects = {n.name for n in everyday if not n.is_part}
    assert objects >= COCO_80
    assert everyday.find("puppy")[0].path_str == "animal/dog/puppy"
    assert everyday.get("vehicle/car/police car").name == "police car"
    assert everyday.find("sofa")[0].path_str == "furniture/couch"  # synonyms resolve


def test_parts_are_addressed_by_path_and_inherited():
    t = load_taxonomy("everyday")
    heads = {n.path_str for n in t.find("head")}
    assert {"person/head", "animal/dog/head", "animal/cat/head"} <= heads
    puppy = t.get("animal/dog/puppy")
    assert "animal/dog/head" in {p.path_str for p in puppy.all_parts()}
    head = t.get("animal/dog/head")
    assert head.is_part and head.object_node().name == "dog"
    assert head.prompts[0] == "dog head"
    assert puppy.is_a(t.get("animal")) and not head.is_a(t.get("animal/dog"))


def test_include_merges_by_path(tmp_path):
    _write(tmp_path, "base.yaml", """
        nodes:
          - name: animal
            children: [{name: dog, parts: [tail]}]
    """)
    main = _write(tmp_path, "main.yaml", """
        name: mine
        include: [base.yaml]
        nodes:
          - name: animal
            children: [{name: dog, children: [puppy]}, cat]
          - vehicle
    """)
    t = load_taxonomy(main)
    assert t.name == "mine"
    assert [n.path_str for n in t] == ["animal", "animal/dog", "animal/dog/puppy", "animal/dog/tail", "animal/cat",
                                       "vehicle"]


@pytest.mark.parametrize("text, pattern", [
    ("nodes: [dog, dog]", r"bad.yaml: duplicate name\(s\) \['dog'\] under top level"),
    ("nodes: [{name: dog, children: [a, a]}]", r"node dog has duplicate child"),
    ("nodes: [{name: dog, children: [a], parts: [a]}]", r"node dog has duplicate"),
    ("nodes: [{name: ''}]", r"empty name under top level"),
    ("nodes: [{name: animal, children: [{prompts: [x]}]}]", r"empty name under animal"),
    ("nodes: [{name: dog, colour: brown}]", r"node dog has unknown key"),
    ("nodes: [{name: dog, prompts: [1]}]", r"'prompts' must be a list"),
    ("nodes: [{name: a/b}]", r"may not contain '/'"),
    ("nodes: []", r"non-empty list"),
    ("nodes: [dog\n  - cat", r"bad.yaml: line \d+, column \d+: invalid YAML"),
    ("include: [nothere.yaml]\nnodes: [a]", r"include 'nothere.yaml' not found"),
    ("- just\n- a list", r"must be a mapping"),
    ("a: &x {name: loop, children: [*x]}\nnodes: [*x]", r"cycle"),
])
def test_malformed_files_get_one_line_errors(tmp_path, text, pattern):
    path = _write(tmp_path, "bad.yaml", text)
    with pytest.raises(TaxonomyError, match=pattern) as info:
        load_taxonomy(path)
    assert "\n" not in str(info.value)


def test_include_cycle(tmp_path):
    _write(tmp_path, "a.yaml", "include: [b.yaml]\nnodes: [x]")
    _write(tmp_path, "b.yaml", "include: [a.yaml]\nnodes: [y]")
    with pytest.raises(TaxonomyError, match="include cycle a.yaml -> b.yaml -> a.yaml"):
        load_taxonomy(tmp_path / "a.yaml")


def test_unknown_taxonomy_name():
    with pytest.raises(TaxonomyError, match="not a shipped taxonomy"):
        load_taxonomy("no-such-taxonomy")


def test_from_labels_and_lookup():
    t = Taxonomy.from_labels(["dog", "red car"])
    assert t.is_flat and [n.name for n in t.top] == ["dog", "red car"]
    assert t.find("RED CAR")[0].name == "red car"
    assert t.search("car")[0].name == "red car"
    with pytest.raises(TaxonomyError, match="no label at path"):
        t.get("cat")
    assert t.to_dict()["nodes"][0]["name"] == "dog"
