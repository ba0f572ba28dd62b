"""The free-text vocabulary: what a query word competes against, and what counts for it."""

from __future__ import annotations

import pytest

from clipsam import Segmenter
from clipsam.core.taxonomy import Taxonomy
from clipsam.core.vocabulary import competitors, default_vocabulary, normal, query_taxonomy
from clipsam.errors import ConfigError


def _words(prompt_sets) -> set[str]:
    return {normal(p) for ps in prompt_sets for p in ps}


def test_normal_forms():
    assert [normal(w) for w in ("Sofa  Cushions", "buses", "ponies", "glass", "bus", "traffic-lights")] == \
        ["sofa cushion", "bus", "pony", "glass", "bus", "traffic light"]


def test_vocabulary_holds_everyday_labels_parts_and_stuff_once():
    vocab = default_vocabulary()
    names = [normal(e.name) for e in vocab]
    assert len(names) == len(set(names)) and len(vocab) > 300
    assert {"cat", "couch", "kitten", "wheel", "head", "wall", "grass", "lamp", "sky"} <= set(names)


def test_a_query_does_not_compete_with_its_synonyms_hypernyms_or_hyponyms():
    vocab = default_vocabulary()
    sofa = _words(competitors(query_taxonomy(["sofa"], vocab), vocab))
    assert "couch" not in sofa and "sofa" not in sofa and "furniture" not in sofa  # synonym (couch: sofa), hypernym
    assert {"chair", "bed", "cat", "wall", "carpet"} <= sofa  # real rivals stay
    cat = query_taxonomy(["cat"], vocab)
    assert [n.name for n in cat.top[0].children] == ["kitten"]  # a kitten counts for "cat"
    cat_rivals = _words(competitors(cat, vocab))
    assert not {"cat", "kitten", "animal"} & cat_rivals and {"dog", "couch", "car"} <= cat_rivals
    animal = query_taxonomy(["animal"], vocab)
    assert {"cat", "dog", "horse", "puppy"} <= {n.name for n in animal}
    # a phrase the vocabulary does not know is a kind of its head noun
    striped = _words(competitors(query_taxonomy(["striped cat"], vocab), vocab))
    assert "cat" not in striped and "dog" in striped
    # a user taxonomy's labels, and the labels of a second taxonomy, compete too
    tax = Taxonomy.from_labels(["zebra crossing", "lamp post"])
    rivals = _words(competitors(query_taxonomy(["cat"], vocab), vocab, others=tax))
    assert {"zebra crossing", "lamp post"} <= rivals


def test_segmenter_checks_the_new_options():
    with pytest.raises(ConfigError, match="scoring must be one of subtree, top-down"):
        Segmenter(sam="tiny-random", clip="tiny-random", scoring="bottom-up")
    for bad in (-1, float("nan"), "4", True):
        with pytest.raises(ConfigError, match="union_margin"):
            Segmenter(sam="tiny-random", clip="tiny-random", union_margin=bad)
    seg = Segmenter(sam="tiny-random", clip="tiny-random", union_margin=None, vocabulary=False, scoring="top-down")
    assert seg.config()["scoring"] == "top-down" and seg.config()["union_margin"] is None
