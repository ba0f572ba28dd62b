"""Labels from embeddings: prompt ensembles, the text-embedding cache, and hierarchical scoring -- through subtrees
(CHiLS-style, the default) or top-down.

Pure numpy; the text encoder is any :class:`~clipsam.models.base.RegionEmbedder`.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..models.base import RegionEmbedder
from .taxonomy import Taxonomy, TaxonomyNode

log = logging.getLogger(__name__)

#: Prompt templates averaged into one text embedding per label (a small subset of CLIP's ImageNet ensemble).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
)

#: "Nothing of interest" labels that compete with the real ones, so that no match is a valid answer.
DEFAULT_NEGATIVES: tuple[str, ...] = (
    "background", "wall", "floor", "ground", "sky", "texture", "pattern", "surface",
)

#: How taxonomy labels are scored: ``subtree`` (one softmax over every label, a label's probability the sum over its
#: subtree: CHiLS) or ``top-down`` (level by level, from the top-level names).
SCORINGS = ("subtree", "top-down")

__all__ = ["DEFAULT_NEGATIVES", "DEFAULT_TEMPLATES", "SCORINGS", "LabelDecision", "SubtreeScores", "TextBank",
           "choose", "fill_template", "label_hierarchical", "label_objects", "score_flat", "softmax",
           "subtree_scores"]


#: Part of every text-cache key: changes whenever the texts made from a template and a label change.
_TEXT_FORMAT = "articles-v1"
_AN_EXCEPTIONS = ("uni", "use", "usu", "uti", "eu", "ewe", "one", "once", "ur")
_AN_SILENT_H = ("hour", "honest", "honor", "honour", "heir")


def fill_template(template: str, label: str) -> str:
    """*template* with *label* in its ``{}``, the article before it made right: "a photo of an animal.",
    "a photo of a unicycle.", "a photo of an hourglass." (prompt ensembles average over such sentences)."""
    text = template.format(label)
    word = label.strip().lower()
    an = (word[:1] in "aeiou" and not word.startswith(_AN_EXCEPTIONS)) or word.startswith(_AN_SILENT_H)
    if an and word:
        head, sep, _ = template.partition("{}")
        if sep and (head.endswith(" a ") or head == "a "):
            text = head[:-2] + "an " + label + template[len(head) + 2:]
    return text


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


class TextBank:
    """Text embeddings of labels, each the normalised mean over its prompts x templates.

    Cached in memory and, when the embedder has a ``cache_key`` and *cache_dir* is given, on disk (one ``.npy``
    per (model, templates, prompts)), so a label is encoded once per model, ever.
    """

    def __init__(self, embedder: RegionEmbedder, templates: Sequence[str] = DEFAULT_TEMPLATES,
                 cache_dir: Path | None = None) -> None:
        self.embedder = embedder
        self.templates = tuple(templates)
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ValueError(f"every template must contain '{{}}', got {self.templates}")
        key = getattr(embedder, "cache_key", None)
        self.cache_dir = (Path(cache_dir) / _safe(key)) if (cache_dir is not None and key) else None
        self._memory: dict[tuple[str, ...], np.ndarray] = {}
        self.encoded_texts = 0  # how many texts went through the text encoder (for tests and benchmarks)

    @property
    def logit_scale(self) -> float:
        """The temperature that turns cosine similarities into logits (the embedder's; CLIP: 100)."""
        return float(self.embedder.logit_scale)

    def _file(self, prompts: tuple[str, ...]) -> Path | None:
        if self.cache_dir is None:
            return None
        # surrogatepass: a label from a command line with undecodable bytes keys its own file instead of crashing
        text = "\x1f".join((_TEXT_FORMAT,) + self.templates + ("\x1e",) + prompts)
        digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()
        return self.cache_dir / f"{digest}.npy"

    def embed(self, prompt_sets: Sequence[Sequence[str]]) -> np.ndarray:
        """``(M, D) float32`` unit vectors, one per prompt set (a label's synonyms)."""
        keys = [tuple(p) for p in prompt_sets]
        missing = []
        for key in dict.fromkeys(keys):
            if key in self._memory:
                continue
            path = self._file(key)
            if path is not None and path.is_file():
                try:
                    self._memory[key] = np.load(path)
                    continue
                except (OSError, ValueError):
                    log.warning("ignoring unreadable text cache file %s", path)
            missing.append(key)
        if missing:
            texts = [fill_template(t, p) for key in missing for p in key for t in self.templates]
            vecs = self.embedder.embed_texts(texts)
            self.encoded_texts += len(texts)
            start = 0
            for key in missing:
                n = len(key) * len(self.templates)
                mean = vecs[start:start + n].mean(axis=0)
                start += n
                vec = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
                self._memory[key] = vec
                path = self._file(key)
                if path is not None:
                    self._store(path, vec)
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._memory[k] for k in keys])

    @staticmethod
    def _store(path: Path, vec: np.ndarray) -> None:
        """One cache file, written atomically (:func:`clipsam.files.atomic_write`: a temporary name per writer, never
        through a link), so that workers embedding the same label never see half a file."""
        from ..files import atomic_write

        buffer = io.BytesIO()
        np.save(buffer, vec)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, buffer.getvalue())
        except OSError as exc:  # a read-only cache must not stop labelling
            log.warning("could not write text cache %s: %s", path, exc)

    def embed_nodes(self, nodes: Sequence[TaxonomyNode]) -> np.ndarray:
        return self.embed([n.prompts for n in nodes])


@dataclass(frozen=True)
class LabelDecision:
    """The label chosen for one region.

    Attributes:
        node: the deepest accepted taxonomy node, or ``None`` when nothing matched (open set: unknown).
        path_scores: probability of the path down to each accepted level, top-down (same length as
            ``node.path``): the product of the level-by-level probabilities, so it never increases with depth.
        best_guess: for an unknown region, the most likely top-level node anyway (for inspection).
        best_guess_score: its probability.
    """

    node: TaxonomyNode | None
    path_scores: tuple[float, ...] = ()
    best_guess: TaxonomyNode | None = None
    best_guess_score: float = 0.0

    @property
    def score(self) -> float:
        """The probability of the whole path (its last entry): what ``.best``, ``--min-score`` and AP rank by, so a
        deep label never outranks a shallow one on weaker evidence."""
        return self.path_scores[-1] if self.path_scores else 0.0


def _probs(embeddings: np.ndarray, text: np.ndarray, scale: float) -> np.ndarray:
    return softmax(scale * (embeddings @ text.T))


def prompt_sets(negatives: Sequence[str | Sequence[str]]) -> list[tuple[str, ...]]:
    """Competitors as prompt sets: a word is its own set, a tuple a set of synonyms."""
    return [(n,) if isinstance(n, str) else tuple(n) for n in negatives]


def score_flat(
    embeddings: np.ndarray,
    candidates: Sequence[TaxonomyNode],
    bank: TextBank,
    *,
    negatives: Sequence[str | Sequence[str]] = DEFAULT_NEGATIVES,
    min_confidence: float = 0.3,
) -> list[LabelDecision]:
    """One level: softmax over *candidates* + *negatives* (background words and other competitors); accept the best
    candidate if it beats every negative and reaches *min_confidence*."""
    n = len(embeddings)
    if n == 0:
        return []
    if not candidates:
        return [LabelDecision(None) for _ in range(n)]
    text = bank.embed([c.prompts for c in candidates] + prompt_sets(negatives))
    p = _probs(embeddings, text, bank.logit_scale)
    k = len(candidates)
    best_cand = p[:, :k].argmax(axis=1)
    # a candidate must strictly beat every negative: a region like none of them (a tie) is not the first category
    best_negative = p[:, k:].max(axis=1) if p.shape[1] > k else np.zeros(n)
    out = []
    for i in range(n):
        guess, guess_p = candidates[int(best_cand[i])], float(p[i, best_cand[i]])
        if guess_p > best_negative[i] and guess_p >= min_confidence:
            out.append(LabelDecision(guess, (guess_p,), guess, guess_p))
        else:
            out.append(LabelDecision(None, (), guess, guess_p))
    return out


def descend(
    embeddings: np.ndarray,
    decisions: list[LabelDecision],
    bank: TextBank,
    *,
    descend_confidence: float = 0.5,
) -> list[LabelDecision]:
    """Refine accepted labels down the is-a tree: at each node, softmax over the node itself ("just a dog") and
    its children; step into the best child while it wins with at least *descend_confidence*."""
    out = list(decisions)
    frontier = {i for i, d in enumerate(out) if d.node is not None and d.node.children}
    while frontier:
        by_node: dict[int, list[int]] = {}
        nodes: dict[int, TaxonomyNode] = {}
        for i in frontier:
            node = out[i].node
            assert node is not None
            by_node.setdefault(id(node), []).append(i)
            nodes[id(node)] = node
        frontier = set()
        for key, idx in by_node.items():
            node = nodes[key]
            options = [node, *node.children]
            p = _probs(embeddings[idx], bank.embed_nodes(options), bank.logit_scale)
            for row, i in enumerate(idx):
                j = int(p[row].argmax())
                if j > 0 and p[row, j] >= descend_confidence:
                    child = options[j]
                    prev = out[i]
                    path_p = prev.score * float(p[row, j])  # P(path to child) = P(path to node) * P(child | node)
                    out[i] = LabelDecision(child, (*prev.path_scores, path_p), prev.best_guess,
                                           prev.best_guess_score)
                    if child.children:
                        frontier.add(i)
    return out


def label_hierarchical(
    embeddings: np.ndarray,
    taxonomy: Taxonomy,
    bank: TextBank,
    *,
    negatives: Sequence[str | Sequence[str]] = DEFAULT_NEGATIVES,
    min_confidence: float = 0.3,
    descend_confidence: float = 0.5,
) -> list[LabelDecision]:
    """Top-down labelling of ``(N, D)`` region embeddings against *taxonomy*'s object categories.

    A region below *min_confidence* at the top level, or closer to a negative label, is unknown (open set),
    not forced into the nearest class.
    """
    top = score_flat(embeddings, taxonomy.top, bank, negatives=negatives, min_confidence=min_confidence)
    return descend(embeddings, top, bank, descend_confidence=descend_confidence)


@dataclass(frozen=True)
class SubtreeScores:
    """One softmax over object labels, extra candidates and competitors, for ``N`` regions.

    Attributes:
        nodes: the object labels scored (every non-part node under the given tops, pre-order).
        prob: ``(N, len(nodes))`` each label's own probability.
        mass: ``(N, len(nodes))`` each label's probability plus its subtree's (CHiLS): P(the region is this label or
            something below it).
        extra: ``(N, len(extra))`` probabilities of the extra candidates (parts).
        rival: ``(N,)`` the largest probability of a single competitor.
    """

    nodes: tuple[TaxonomyNode, ...]
    prob: np.ndarray
    mass: np.ndarray
    extra: np.ndarray
    rival: np.ndarray

    def column(self, node: TaxonomyNode) -> int:
        return next(j for j, n in enumerate(self.nodes) if n is node)

    def subtree(self, node: TaxonomyNode) -> list[int]:
        """Columns of *node* and every label below it."""
        return [j for j, n in enumerate(self.nodes) if n.is_a(node)]


def subtree_scores(embeddings: np.ndarray, tops: Sequence[TaxonomyNode], bank: TextBank,
                   competitors: Sequence[str | Sequence[str]], extra: Sequence[TaxonomyNode] = ()) -> SubtreeScores:
    """Score every object label under *tops*, the *extra* nodes and the *competitors* in one softmax; sum each
    label's probability up its is-a ancestors."""
    nodes = tuple(n for top in tops for n in top.walk() if not n.is_part)
    comps = prompt_sets(competitors)
    n, k, e = len(embeddings), len(nodes), len(extra)
    if n == 0 or k + e == 0:
        return SubtreeScores(nodes, np.zeros((n, k)), np.zeros((n, k)), np.zeros((n, e)), np.zeros(n))
    text = bank.embed([c.prompts for c in nodes] + [c.prompts for c in extra] + comps)
    p = _probs(embeddings, text, bank.logit_scale).astype(np.float64)
    mass = p[:, :k].copy()
    col = {id(c): j for j, c in enumerate(nodes)}
    for j in range(k - 1, -1, -1):  # reversed pre-order: every node after all of its descendants
        parent = nodes[j].parent
        if parent is not None and id(parent) in col:
            mass[:, col[id(parent)]] += mass[:, j]
    rival = p[:, k + e:].max(axis=1) if p.shape[1] > k + e else np.zeros(n)
    return SubtreeScores(nodes, p[:, :k], mass, p[:, k:k + e], rival)


def choose(scores: SubtreeScores, row: int, tops: Sequence[TaxonomyNode], *, min_confidence: float,
           descend_confidence: float, deep: bool = True) -> LabelDecision:
    """Region *row*'s label among *tops*: the top with the most mass, accepted if it reaches *min_confidence* and a
    label in its subtree beats every competitor (label against word: a subtree of many labels gathers mass even
    from a crop that matches none of them); then down into the child with the most mass while that child holds at least
    *descend_confidence* of its parent's mass. ``path_scores`` are the masses along the path (non-increasing)."""
    if not tops:
        return LabelDecision(None)
    m = scores.mass[row]
    cols = [scores.column(t) for t in tops]
    j = max(cols, key=lambda c: m[c])
    top, top_p = scores.nodes[j], float(m[j])
    if not (scores.prob[row, scores.subtree(top)].max() > scores.rival[row] and top_p >= min_confidence):
        return LabelDecision(None, (), top, top_p)
    node, path = top, [top_p]
    while deep and node.children:
        kids = [scores.column(c) for c in node.children]
        c = max(kids, key=lambda x: m[x])
        if m[c] <= 0 or m[c] < descend_confidence * path[-1]:
            break
        node = scores.nodes[c]
        path.append(min(float(m[c]), path[-1]))
    return LabelDecision(node, tuple(path), top, top_p)


def label_objects(embeddings: np.ndarray, tops: Sequence[TaxonomyNode], bank: TextBank, *,
                  competitors: Sequence[str | Sequence[str]] = DEFAULT_NEGATIVES, scoring: str = "subtree",
                  min_confidence: float = 0.3, descend_confidence: float = 0.5, deep: bool = True
                  ) -> list[LabelDecision]:
    """Object labels of ``(N, D)`` region embeddings among the labels under *tops*, by *scoring* (``subtree`` or
    ``top-down``), to the deepest confident level (*deep*) or the top level only; a region closer to a competitor,
    or below *min_confidence*, is unknown (open set)."""
    if scoring == "top-down":
        top = score_flat(embeddings, tops, bank, negatives=competitors, min_confidence=min_confidence)
        return descend(embeddings, top, bank, descend_confidence=descend_confidence) if deep else top
    if scoring != "subtree":
        raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    scores = subtree_scores(embeddings, tops, bank, competitors)
    return [choose(scores, i, tops, min_confidence=min_confidence, descend_confidence=descend_confidence,
                   deep=deep) for i in range(len(embeddings))]


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in key)

