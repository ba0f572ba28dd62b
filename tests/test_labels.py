import numpy as np
import pytest

from clipsam.core.labels import TextBank, label_hierarchical, score_flat, softmax
from clipsam.core.taxonomy import Taxonomy


class AxisEmbedder:
    """Texts map to the axis of the first known word; counts encoder calls."""

    name = "axis"
    image_size = 8
    logit_scale = 100.0

    def __init__(self, words, cache_key=None):
        self.words = list(words)
        self.cache_key = cache_key
        self.calls = 0

    def embed_images(self, crops):
        raise AssertionError("not used")

    def embed_texts(self, texts):
        self.calls += 1
        out = np.zeros((len(texts), len(self.words) + 1), np.float32)
        for i, t in enumerate(texts):
            hit = [k for k, w in enumerate(self.words) if w in t]
            out[i, hit[0] if hit else -1] = 1.0
        return out

    def vec(self, **weights):
        v = np.zeros(len(self.words) + 1, np.float32)
        for w, x in weights.items():
            v[self.words.index(w.replace("_", " "))] = x
        return v / np.linalg.norm(v)


WORDS = ["puppy", "dog", "cat", "animal", "car", "vehicle", "background", "wall"]


def test_softmax_rows_sum_to_one():
    p = softmax(np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]]))
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert p[1, 0] == pytest.approx(1.0)


def test_text_bank_caches_in_memory_and_on_disk(tmp_path):
    emb = AxisEmbedder(WORDS, cache_key="axis/v1")
    bank = TextBank(emb, templates=("a photo of a {}.", "a {}"), cache_dir=tmp_path)
    a = bank.embed([("dog",), ("cat", "animal")])
    assert a.shape == (2, len(WORDS) + 1)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)
    assert bank.encoded_texts == 6
    bank.embed([("dog",)])
    assert bank.encoded_texts == 6  # memory hit
    fresh_model = AxisEmbedder(WORDS, cache_key="axis/v1")
    again = TextBank(fresh_model, templates=("a photo of a {}.", "a {}"), cache_dir=tmp_path)
    np.testing.assert_array_equal(again.embed([("dog",), ("cat", "animal")]), a)
    assert fresh_model.calls == 0  # disk hit
    other = TextBank(AxisEmbedder(WORDS, cache_key="axis/v1"), templates=("{}",), cache_dir=tmp_path)
    other.embed([("dog",)])
    assert other.encoded_texts == 1  # other templates: another cache entry
    with pytest.raises(ValueError, match="template"):
        TextBank(emb, templates=("no placeholder",))


def test_no_disk_cache_without_a_cache_key(tmp_path):
    bank = TextBank(AxisEmbedder(WORDS), cache_dir=tmp_path)
    bank.embed([("dog",)])
    assert list(tmp_path.iterdir()) == []


def test_flat_scoring_threshold_and_negatives():
    emb = AxisEmbedder(WORDS)
    bank = TextBank(emb, templates=("{}",))
    tax = Taxonomy.from_labels(["dog", "cat"])
    feats = np.stack([emb.vec(dog=1), emb.vec(background=1), emb.vec(dog=1, cat=1), emb.vec(car=1)])
    d = score_flat(feats, tax.top, bank, negatives=("background", "wall"), min_confidence=0.6)
    assert d[0].node.name == "dog" and d[0].score == pytest.approx(1.0)
    assert d[1].node is None  # a negative wins: nothing matches
    assert d[2].node is None and d[2].best_guess_score == pytest.approx(0.5)  # a tie is below 0.6
    assert d[3].node is None  # matches nothing in particular: uniform, below threshold


def test_hierarchical_descends_while_confident():
    emb = AxisEmbedder(WORDS)
    bank = TextBank(emb, templates=("{}",))
    tax = Taxonomy.from_dict({"nodes": [{"name": "animal", "children": [{"name": "dog", "children": ["puppy"]},
                                                                            "cat"]},
                                        {"name": "vehicle", "children": ["car"]}]})
    feats = np.stack([emb.vec(puppy=1, dog=0.6, animal=0.4), emb.vec(dog=1, animal=0.5),
                      emb.vec(animal=1), emb.vec(car=1, vehicle=0.5)])
    out = label_hierarchical(feats, tax, bank, negatives=("background",))
    assert [d.node.path_str for d in out] == ["animal/dog/puppy", "animal/dog", "animal", "vehicle/car"]
    assert all(len(d.path_scores) == len(d.node.path) for d in out)


def test_templates_get_the_right_article():
    from clipsam.core.labels import fill_template

    cases = {"animal": "a photo of an animal.", "dog": "a photo of a dog.", "unicycle": "a photo of a unicycle.",
             "hourglass": "a photo of an hourglass.", "elephant": "a photo of an elephant.",
             "European car": "a photo of a European car.", "umbrella": "a photo of an umbrella."}
    for label, text in cases.items():
        assert fill_template("a photo of a {}.", label) == text
    assert fill_template("a photo of a small {}.", "animal") == "a photo of a small animal."
    assert fill_template("a photo of the {}.", "animal") == "a photo of the animal."
    assert fill_template("a {}", "owl") == "an owl"


def test_text_bank_sends_the_corrected_sentences(scene):
    from clipsam.core.labels import TextBank
    from clipsam.testing import OracleEmbedder

    emb = OracleEmbedder(scene)
    TextBank(emb).embed([("animal",), ("dog",)])
    assert "a photo of an animal." in emb.texts_seen and "a photo of a animal." not in emb.texts_seen
    assert "a photo of a dog." in emb.texts_seen
